/* pgpool_tw._speedups: the session tracker (see _speedups.c). */
#include "_speedups.h"

/* ------------------------------------------------------------------------- */
/* SessionTracker                                                             */
/* ------------------------------------------------------------------------- */



/* A tracker made by __new__ alone still has a params dict: no NULL to trip on. */
static PyObject *
tracker_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Tracker *self = (Tracker *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->status = IDLE;
    self->params = PyDict_New();
    if (self->params == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
tracker_init(Tracker *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"params", "status", NULL};
    PyObject *params;
    int status = IDLE;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|i", kwlist, &PyDict_Type, &params, &status))
        return -1;
    Py_INCREF(params);
    Py_XSETREF(self->params, params);
    self->pending = 0;
    self->unsynced = 0;
    self->status = status;
    self->c_skip = 0;
    self->c_head_len = 0;
    self->s_skip = 0;
    self->s_head_len = 0;
    self->s_type = 0;
    self->s_body_len = 0;
    self->s_need = 0;
    self->changed = 0;
    self->queries = self->xacts = self->bytes_in = self->bytes_out = 0;
    return 0;
}

static void
tracker_dealloc(Tracker *self)
{
    Py_XDECREF(self->params);
    PyMem_Free(self->s_body);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* One client message's effect; returns 1 for a Terminate. */
static inline int
client_message(Tracker *t, int kind)
{
    if (kind == C_QUERY || kind == C_FUNCTION_CALL) {
        t->pending++;
    } else if (kind == C_SYNC) {
        t->pending++;
        t->unsynced = 0;
    } else if (kind == C_TERMINATE) {
        return 1;
    } else if (kind != C_COPY_DATA && kind != C_COPY_DONE && kind != C_COPY_FAIL) {
        t->unsynced = 1;
    }
    return 0;
}

/* Walk a client chunk; the offset of a Terminate in it, or -1. */
Py_ssize_t
feed_client_raw(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    int64_t pos = t->c_skip;
    t->bytes_in += n;
    if (pos >= n) {
        t->c_skip = pos - n;
        return -1;
    }
    if (t->c_head_len) {
        int had = t->c_head_len;
        int take = 5 - had;
        if (take > n)
            take = (int)n;
        memcpy(t->c_head + had, data, (size_t)take);
        if (had + take < 5) {
            t->c_head_len = had + take;
            return -1;
        }
        t->c_head_len = 0;
        if (client_message(t, t->c_head[0])) {
            /* Part of this Terminate already went to the server: not reusable. */
            t->unsynced = 1;
            t->c_skip = 0;
            return 0;
        }
        /* A length under 4 (malformed) is taken as 4: never step back before the header. */
        int64_t length = length_at(t->c_head + 1);
        pos = -had + 1 + (length < 4 ? 4 : length);
    }
    while (pos < n) {
        if (n - pos < 5) {
            t->c_head_len = (int)(n - pos);
            memcpy(t->c_head, data + pos, (size_t)t->c_head_len);
            t->c_skip = 0;
            return -1;
        }
        if (client_message(t, data[pos])) {
            t->c_skip = 0;
            return (Py_ssize_t)pos;
        }
        pos += 1 + length_at(data + pos + 1);
    }
    t->c_skip = pos - n;
    return -1;
}

/* Append to a growing PyMem buffer (doubling from 64 bytes); -1 on no memory. */
int
buffer_append(unsigned char **buf, Py_ssize_t *len, Py_ssize_t *cap, const unsigned char *data,
              Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    if (*len + n > *cap) {
        Py_ssize_t size = *cap ? *cap : 64;
        while (size < *len + n)
            size *= 2;
        unsigned char *grown = PyMem_Realloc(*buf, (size_t)size);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *buf = grown;
        *cap = size;
    }
    memcpy(*buf + *len, data, (size_t)n);
    *len += n;
    return 0;
}

static int
body_append(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    return buffer_append(&t->s_body, &t->s_body_len, &t->s_body_cap, data, n);
}

/* A ParameterStatus body: name\0value\0.  Malformed ones are ignored, as in Python. */
int
parameter_status(Tracker *t, const unsigned char *body, Py_ssize_t n)
{
    if (n < 1 || body[n - 1] != 0)
        return 0;
    const unsigned char *first = memchr(body, 0, (size_t)n);
    Py_ssize_t name_len = first - body;
    if (name_len + 1 >= n) /* one string only */
        return 0;
    const unsigned char *value = first + 1;
    Py_ssize_t value_len = n - 1 - (name_len + 1);
    if (memchr(value, 0, (size_t)value_len) != NULL) /* three or more strings */
        return 0;
    PyObject *name = PyUnicode_DecodeUTF8((const char *)body, name_len, "surrogateescape");
    if (name == NULL)
        return -1;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)value, value_len, "surrogateescape");
    if (text == NULL) {
        Py_DECREF(name);
        return -1;
    }
    int rc = PyDict_SetItem(t->params, name, text);
    Py_DECREF(name);
    Py_DECREF(text);
    t->changed++;
    return rc;
}

static int
server_body(Tracker *t, int kind, const unsigned char *body, Py_ssize_t n)
{
    if (kind == S_READY) {
        if (n > 0)
            t->status = body[0];
        if (t->pending) {
            t->pending--;
            t->queries++;
            t->xacts += t->status == IDLE;
        }
        return 0;
    }
    return parameter_status(t, body, n);
}

/*
 * A header found in `head` at `at` whose body starts at `body_start` of `data`
 * (negative when the header began in an earlier chunk).  Sets *end to where the
 * message ends in `data`; returns -1 on a Python error.
 */
static int
server_header(Tracker *t, const unsigned char *data, Py_ssize_t n, const unsigned char *head,
              int64_t body_start, int64_t *end)
{
    int kind = head[0];
    int64_t length = length_at(head + 1);
    int64_t stop = body_start - 4 + (length < 4 ? 4 : length); /* as in feed_client_raw */
    if (kind != S_READY && kind != S_PARAMETER_STATUS) {
        *end = stop;
        return 0;
    }
    int64_t from = body_start < 0 ? 0 : body_start;
    if (stop > n) {
        t->s_type = kind;
        t->s_body_len = 0;
        if (body_append(t, data + from, n - from) < 0)
            return -1;
        t->s_need = stop - n;
        *end = n;
        return 0;
    }
    *end = stop;
    return server_body(t, kind, data + from, stop > from ? stop - from : 0);
}

/* Walk a server chunk; -1 on a Python error (only from the params dict). */
int
feed_server_raw(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    int64_t pos = t->s_skip;
    int64_t end;
    t->bytes_out += n;
    if (t->s_need) {
        int64_t need = t->s_need;
        if (body_append(t, data, n < need ? n : need) < 0)
            return -1;
        if (n < need) {
            t->s_need = need - n;
            return 0;
        }
        t->s_need = 0;
        int rc = server_body(t, t->s_type, t->s_body, t->s_body_len);
        t->s_body_len = 0;
        if (rc < 0)
            return -1;
        pos = need;
    } else if (pos >= n) {
        t->s_skip = pos - n;
        return 0;
    } else if (t->s_head_len) {
        int had = t->s_head_len;
        int take = 5 - had;
        if (take > n)
            take = (int)n;
        memcpy(t->s_head + had, data, (size_t)take);
        if (had + take < 5) {
            t->s_head_len = had + take;
            return 0;
        }
        t->s_head_len = 0;
        if (server_header(t, data, n, t->s_head, -had + 5, &end) < 0)
            return -1;
        pos = end;
    }
    while (pos < n) {
        if (n - pos < 5) {
            t->s_head_len = (int)(n - pos);
            memcpy(t->s_head, data + pos, (size_t)t->s_head_len);
            t->s_skip = 0;
            return 0;
        }
        int kind = data[pos];
        end = pos + 1 + length_at(data + pos + 1);
        if (kind == S_READY && end <= n) {
            if (end > pos + 5)
                t->status = data[pos + 5];
            if (t->pending) {
                t->pending--;
                t->queries++;
                t->xacts += t->status == IDLE;
            }
        } else if (kind == S_READY || kind == S_PARAMETER_STATUS) {
            if (server_header(t, data, n, data + pos, pos + 5, &end) < 0)
                return -1;
            if (t->s_need)
                return 0;
        }
        pos = end;
    }
    t->s_skip = pos - n;
    return 0;
}

static PyObject *
tracker_feed_client(Tracker *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t at = feed_client_raw(self, view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(at);
}

static PyObject *
tracker_feed_server(Tracker *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = feed_server_raw(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

int
tracker_in_sync_c(Tracker *t)
{
    return t->pending == 0 && !t->unsynced && !t->c_skip && !t->c_head_len && !t->s_skip &&
           !t->s_head_len && !t->s_need;
}

static PyObject *
tracker_get_in_sync(Tracker *self, void *closure)
{
    return PyBool_FromLong(tracker_in_sync_c(self));
}

static PyObject *
tracker_get_server_at_boundary(Tracker *self, void *closure)
{
    return PyBool_FromLong(!self->s_skip && !self->s_head_len && !self->s_need);
}

static PyObject *
tracker_get_pending(Tracker *self, void *closure)
{
    return PyLong_FromLong(self->pending);
}

static PyObject *
tracker_get_unsynced(Tracker *self, void *closure)
{
    return PyBool_FromLong(self->unsynced);
}

static PyObject *
tracker_get_status(Tracker *self, void *closure)
{
    return PyLong_FromLong(self->status);
}

static int
tracker_set_status(Tracker *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete status");
        return -1;
    }
    long status = PyLong_AsLong(value);
    if (status == -1 && PyErr_Occurred())
        return -1;
    self->status = (int)status;
    return 0;
}

static PyObject *
tracker_get_params(Tracker *self, void *closure)
{
    Py_INCREF(self->params);
    return self->params;
}

/* The private buffers, read by tests that check nothing but headers is held. */
static PyObject *
tracker_get_c_head(Tracker *self, void *closure)
{
    return PyBytes_FromStringAndSize((const char *)self->c_head, self->c_head_len);
}

static PyObject *
tracker_get_s_head(Tracker *self, void *closure)
{
    return PyBytes_FromStringAndSize((const char *)self->s_head, self->s_head_len);
}

static PyObject *
tracker_get_s_body(Tracker *self, void *closure)
{
    Py_ssize_t len = self->s_need ? self->s_body_len : 0;
    return PyBytes_FromStringAndSize((const char *)self->s_body, len);
}

#define TRACKER_COUNTER(name)                                                         \
    static PyObject *tracker_get_##name(Tracker *self, void *closure)                  \
    {                                                                                  \
        return PyLong_FromLongLong(self->name);                                        \
    }
TRACKER_COUNTER(queries)
TRACKER_COUNTER(xacts)
TRACKER_COUNTER(bytes_in)
TRACKER_COUNTER(bytes_out)

/* The counters since the last take, zeroed: each count reaches the totals once. */
static PyObject *
tracker_take_counts(Tracker *self, PyObject *unused)
{
    PyObject *counts =
        Py_BuildValue("(LLLL)", self->queries, self->xacts, self->bytes_in, self->bytes_out);
    if (counts != NULL)
        self->queries = self->xacts = self->bytes_in = self->bytes_out = 0;
    return counts;
}

static PyMethodDef tracker_methods[] = {
    {"take_counts", (PyCFunction)tracker_take_counts, METH_NOARGS,
     "(queries, xacts, bytes_in, bytes_out) since the last take; zeroes them."},
    {"feed_client", (PyCFunction)tracker_feed_client, METH_O,
     "Walk a client chunk; return the offset of a Terminate in it, or -1."},
    {"feed_server", (PyCFunction)tracker_feed_server, METH_O,
     "Walk a server chunk, noting ReadyForQuery states and ParameterStatus."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tracker_getset[] = {
    {"in_sync", (getter)tracker_get_in_sync, NULL,
     "Both streams are at a message boundary and the server owes nothing.", NULL},
    {"server_at_boundary", (getter)tracker_get_server_at_boundary, NULL,
     "The client has been sent whole server messages only.", NULL},
    {"pending", (getter)tracker_get_pending, NULL,
     "Query/Sync/FunctionCall messages sent that have no ReadyForQuery yet.", NULL},
    {"unsynced", (getter)tracker_get_unsynced, NULL,
     "Extended-protocol messages were sent after the last Sync.", NULL},
    {"status", (getter)tracker_get_status, (setter)tracker_set_status,
     "Transaction state byte of the last ReadyForQuery.", NULL},
    {"params", (getter)tracker_get_params, NULL,
     "The server connection's reported parameters, updated in place.", NULL},
    {"queries", (getter)tracker_get_queries, NULL,
     "ReadyForQuery messages that answered a Query, Sync or FunctionCall.", NULL},
    {"xacts", (getter)tracker_get_xacts, NULL, "Those of them that reported idle.", NULL},
    {"bytes_in", (getter)tracker_get_bytes_in, NULL, "Client bytes walked.", NULL},
    {"bytes_out", (getter)tracker_get_bytes_out, NULL, "Server bytes walked.", NULL},
    {"_c_head", (getter)tracker_get_c_head, NULL, NULL, NULL},
    {"_s_head", (getter)tracker_get_s_head, NULL, NULL, NULL},
    {"_s_body", (getter)tracker_get_s_body, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject TrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.SessionTracker",
    .tp_doc = "Headers-only view of one session; shared by both directions of a relay.",
    .tp_basicsize = sizeof(Tracker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = tracker_new,
    .tp_init = (initproc)tracker_init,
    .tp_dealloc = (destructor)tracker_dealloc,
    .tp_methods = tracker_methods,
    .tp_getset = tracker_getset,
};

