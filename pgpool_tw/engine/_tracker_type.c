/* pgpool_tw._speedups: the SessionTracker type Python sees (the walk is _tracker.c). */
#include "_speedups.h"

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
    static char *kwlist[] = {"params", "status", "watch", NULL};
    PyObject *params, *watch = NULL;
    int status = IDLE;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|iO!", kwlist, &PyDict_Type, &params, &status,
                                     &PyTuple_Type, &watch))
        return -1;
    self->nwatch = 0;
    Py_ssize_t words = watch != NULL ? PyTuple_GET_SIZE(watch) : 0;
    if (words > WATCH_MAX) {
        PyErr_SetString(PyExc_ValueError, "at most 4 watch words");
        return -1;
    }
    for (Py_ssize_t w = 0; w < words; w++) {
        PyObject *word = PyTuple_GET_ITEM(watch, w);
        if (!PyBytes_Check(word) || PyBytes_GET_SIZE(word) < 1 ||
            PyBytes_GET_SIZE(word) > WATCH_WORD_MAX) {
            PyErr_SetString(PyExc_ValueError, "a watch word is 1 to 16 bytes");
            return -1;
        }
        const unsigned char *text = (const unsigned char *)PyBytes_AS_STRING(word);
        for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(word); i++) {
            if (text[i] < 'a' || text[i] > 'z') {
                PyErr_SetString(PyExc_ValueError, "a watch word is lower-case ASCII letters");
                return -1;
            }
            self->watch[w][i] = text[i];
        }
        self->watch_len[w] = (unsigned char)PyBytes_GET_SIZE(word);
    }
    self->nwatch = (int)words;
    self->local = 0;
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
    self->query_time = 0.0;
    memset(self->query_hist, 0, sizeof(self->query_hist));
    return 0;
}

static void
tracker_dealloc(Tracker *self)
{
    Py_XDECREF(self->params);
    PyMem_Free(self->s_body);
    Py_TYPE(self)->tp_free((PyObject *)self);
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

/* Read by session/cancel.py only: a cancel is bound to the busy period it came in. */
static PyObject *
tracker_get_busy_since(Tracker *self, void *closure)
{
    return PyFloat_FromDouble(self->busy_since);
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

static PyObject *
tracker_get_local(Tracker *self, void *closure)
{
    return PyBool_FromLong(self->local);
}

static PyObject *
tracker_get_watch(Tracker *self, void *closure)
{
    PyObject *words = PyTuple_New(self->nwatch);
    for (int w = 0; words != NULL && w < self->nwatch; w++) {
        PyObject *word =
            PyBytes_FromStringAndSize((const char *)self->watch[w], self->watch_len[w]);
        if (word == NULL) {
            Py_CLEAR(words);
            break;
        }
        PyTuple_SET_ITEM(words, w, word);
    }
    return words;
}

/* The Query the walk stopped before goes to the server after all (Python sent it). */
static PyObject *
tracker_pass_query(Tracker *self, PyObject *args)
{
    Py_ssize_t size, sent;
    if (!PyArg_ParseTuple(args, "nn", &size, &sent))
        return NULL;
    if (sent < 0 || size < sent) {
        PyErr_SetString(PyExc_ValueError, "0 <= sent <= size");
        return NULL;
    }
    if (self->pending++ == 0)
        self->busy_since = event_now();
    self->bytes_in += sent;
    self->c_skip = size - sent;
    Py_RETURN_NONE;
}

/* (seconds, counts by log2 bucket) of a histogram, zeroed: one harvest takes each. */
PyObject *
take_hist(double *seconds, long long *counts)
{
    PyObject *buckets = PyTuple_New(HIST_BUCKETS);
    if (buckets == NULL)
        return NULL;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        PyObject *count = PyLong_FromLongLong(counts[i]);
        if (count == NULL) {
            Py_DECREF(buckets);
            return NULL;
        }
        PyTuple_SET_ITEM(buckets, i, count);
    }
    PyObject *result = Py_BuildValue("(dN)", *seconds, buckets);
    if (result != NULL) {
        *seconds = 0.0;
        memset(counts, 0, sizeof(long long) * HIST_BUCKETS);
    }
    return result;
}

static PyObject *
tracker_take_times(Tracker *self, PyObject *unused)
{
    return take_hist(&self->query_time, self->query_hist);
}

static PyMethodDef tracker_methods[] = {
    {"take_times", (PyCFunction)tracker_take_times, METH_NOARGS,
     "(query seconds, their counts by log2 bucket of microseconds) since the last take; "
     "zeroes them."},
    {"pass_query", (PyCFunction)tracker_pass_query, METH_VARARGS,
     "The Query the walk stopped before, size bytes long, goes to the server after all, sent "
     "bytes of it now: count it and skip the rest of it."},
    {"take_counts", (PyCFunction)tracker_take_counts, METH_NOARGS,
     "(queries, xacts, bytes_in, bytes_out) since the last take; zeroes them."},
    {"feed_client", (PyCFunction)tracker_feed_client, METH_O,
     "Walk a client chunk; return the offset of a Terminate or a watched Query in it, or -1."},
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
    {"busy_since", (getter)tracker_get_busy_since, NULL,
     "When the server's queue last went busy (pending from 0 to 1).", NULL},
    {"status", (getter)tracker_get_status, (setter)tracker_set_status,
     "Transaction state byte of the last ReadyForQuery.", NULL},
    {"params", (getter)tracker_get_params, NULL,
     "The server connection's reported parameters, updated in place.", NULL},
    {"queries", (getter)tracker_get_queries, NULL,
     "ReadyForQuery messages that answered a Query, Sync or FunctionCall.", NULL},
    {"xacts", (getter)tracker_get_xacts, NULL, "Those of them that reported idle.", NULL},
    {"bytes_in", (getter)tracker_get_bytes_in, NULL, "Client bytes walked.", NULL},
    {"bytes_out", (getter)tracker_get_bytes_out, NULL, "Server bytes walked.", NULL},
    {"local", (getter)tracker_get_local, NULL,
     "The last stop of feed_client was before a watched Query, not a Terminate.", NULL},
    {"watch", (getter)tracker_get_watch, NULL,
     "Words a Query text may start with for the walk to stop before it.", NULL},
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
