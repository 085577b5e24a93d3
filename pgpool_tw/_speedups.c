/*
 * pgpool_tw._speedups: the relay's hot path in C, for CPython on Linux.
 *
 * Why it exists: on a 2-core machine shared with PostgreSQL and the clients, the
 * pooler's CPU per transaction decides throughput.  The pure-Python relay spends
 * about 2.5 us of interpreter dispatch per received chunk (Twisted's doRead chain,
 * the header walk, the send-now writer); PgBouncer spends about 1 us of user time
 * per whole transaction.  This module removes that dispatch for attached sessions.
 *
 * What it holds:
 *
 * - SessionTracker: the same object as pgpool_tw.protocol.relay.SessionTracker
 *   (same attributes, same rules, the same results for any cutting of the same
 *   bytes; tests/unit/test_speedups.py runs the Python tracker's tests on it and
 *   compares both on random streams).  It does no I/O.
 *
 * - Relay, register(), unregister(), poll(): an epoll iteration that forwards the
 *   chunks of registered relay sockets itself: recv into one buffer, walk the
 *   headers with the tracker, send at once to the peer.  Everything else is left
 *   to Twisted by returning the (fd, events) pair, exactly as select.epoll.poll
 *   would: events that are not a plain "readable", sockets not registered, a peer
 *   that Twisted is waiting to write to (its own path then keeps order and flow
 *   control), end of file, and receive errors (returned as EPOLLERR so
 *   Twisted reports a lost connection).  What the kernel does not take of a send
 *   goes to the peer transport's write(), as in transport.make_writer.  poll()
 *   returns to Twisted only when there is something for it: an event it owns, a
 *   pump that ran Python code, a signal, or the timeout of its next timed call.
 *
 * - Lane: warm logins.  A client that connects once per transaction and sends a
 *   startup packet Python has logged in before is accepted, logged in on a
 *   pooled server Python lent, relayed, and its server reset and parked again,
 *   all here; every other case goes back to Python (see the Lane section and
 *   pgpool_tw/warm.py).
 *
 * Rules: no allocation per chunk on the common path; Python is called only for
 * a Terminate (the relay's on_terminate), a ParameterStatus (the params dict)
 * a short send (transport.write) and a warm session that leaves the common case.
 * Only the reactor's thread calls in here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define IDLE 'I'
#define RECV_SIZE 65536

/* Client message types. */
#define C_QUERY 'Q'
#define C_SYNC 'S'
#define C_FUNCTION_CALL 'F'
#define C_TERMINATE 'X'
#define C_COPY_DATA 'd'
#define C_COPY_DONE 'c'
#define C_COPY_FAIL 'f'
/* Server message types the tracker reads the body of. */
#define S_READY 'Z'
#define S_PARAMETER_STATUS 'S'

static inline int64_t
length_at(const unsigned char *p)
{
    return ((int64_t)p[0] << 24) | ((int64_t)p[1] << 16) | ((int64_t)p[2] << 8) | (int64_t)p[3];
}

/* ------------------------------------------------------------------------- */
/* SessionTracker                                                             */
/* ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    long pending;
    int unsynced;
    int status;
    PyObject *params; /* dict, shared with the server connection */
    int64_t c_skip;
    unsigned char c_head[5];
    int c_head_len;
    int64_t s_skip;
    unsigned char s_head[5];
    int s_head_len;
    int s_type;
    unsigned char *s_body;
    Py_ssize_t s_body_len;
    Py_ssize_t s_body_cap;
    int64_t s_need;
    long changed; /* ParameterStatus messages recorded (a warm login's reply is stale) */
} Tracker;

static PyTypeObject TrackerType;

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
static Py_ssize_t
feed_client_raw(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    int64_t pos = t->c_skip;
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

static int
body_append(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    if (t->s_body_len + n > t->s_body_cap) {
        Py_ssize_t cap = t->s_body_cap ? t->s_body_cap : 64;
        while (cap < t->s_body_len + n)
            cap *= 2;
        unsigned char *grown = PyMem_Realloc(t->s_body, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->s_body = grown;
        t->s_body_cap = cap;
    }
    memcpy(t->s_body + t->s_body_len, data, (size_t)n);
    t->s_body_len += n;
    return 0;
}

/* A ParameterStatus body: name\0value\0.  Malformed ones are ignored, as in Python. */
static int
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
        if (t->pending)
            t->pending--;
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
static int
feed_server_raw(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    int64_t pos = t->s_skip;
    int64_t end;
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
            if (t->pending)
                t->pending--;
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

static int
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

static PyMethodDef tracker_methods[] = {
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
    {"_c_head", (getter)tracker_get_c_head, NULL, NULL, NULL},
    {"_s_head", (getter)tracker_get_s_head, NULL, NULL, NULL},
    {"_s_body", (getter)tracker_get_s_body, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TrackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw._speedups.SessionTracker",
    .tp_doc = "Headers-only view of one session; shared by both directions of a relay.",
    .tp_basicsize = sizeof(Tracker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = tracker_new,
    .tp_init = (initproc)tracker_init,
    .tp_dealloc = (destructor)tracker_dealloc,
    .tp_methods = tracker_methods,
    .tp_getset = tracker_getset,
};

/* ------------------------------------------------------------------------- */
/* Relay and the epoll iteration                                              */
/* ------------------------------------------------------------------------- */

struct Lane;
static PyTypeObject LaneType;

/* A warm relay's life (see the Lane section below). */
enum { W_PARKED = 0, W_ACTIVE = 1, W_RESETTING = 2, W_RETURNED = 3 };

typedef struct {
    PyObject_HEAD
    Tracker *tracker;
    PyObject *transports[2]; /* [0] the client's (None in a warm relay), [1] the server's */
    PyObject *fd_objs[2];    /* the fds as ints, to look up in `writes` */
    PyObject *writes;        /* the epoll reactor's set of fds it waits to write to */
    int fds[2];
    PyObject *on_terminate;
    long received; /* client chunks forwarded here (client_idle_limit reads it) */
    /* A warm relay (lane != NULL): a pooled server connection lent to a Lane,
       which logs clients in on it, relays, resets and parks it again itself. */
    struct Lane *lane;
    PyObject *stack;  /* the list it parks on */
    PyObject *server; /* the server connection (BackendProtocol) */
    PyObject *reply;  /* AuthenticationOk and the ParameterStatus messages */
    PyObject *reset;  /* the reset queries' messages */
    int reset_count;
    long uses_left; /* sessions it may still start; negative: no limit */
    long uses;      /* sessions it started */
    int wstate;
    uint32_t pid, secret;
    double parked_at; /* CLOCK_MONOTONIC seconds */
    int awaiting;     /* ReadyForQuery messages the reset still owes */
    int reset_ok;
    unsigned char *rbuf; /* the reset's answer, until whole messages are there */
    Py_ssize_t rlen, rcap;
} Relay;

static PyTypeObject RelayType;

static double
monotonic_s(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static int
relay_init(Relay *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tracker", "client",      "server",    "client_fd",
                             "server_fd", "on_terminate", "writes",  "lane",
                             "stack",   "connection",  "reply",     "reset",
                             "reset_count", "uses_left", "pid",     NULL};
    PyObject *tracker, *client, *server, *on_terminate, *writes;
    PyObject *lane = NULL, *stack = NULL, *connection = NULL, *reply = NULL, *reset = NULL;
    int client_fd, server_fd, reset_count = 0;
    long uses_left = -1;
    unsigned long pid = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOiiOO!|O!O!OSSilk", kwlist, &TrackerType,
                                     &tracker, &client, &server, &client_fd, &server_fd,
                                     &on_terminate, &PySet_Type, &writes, &LaneType, &lane,
                                     &PyList_Type, &stack, &connection, &reply, &reset,
                                     &reset_count, &uses_left, &pid))
        return -1;
    if (lane != NULL) {
        if (client_fd != -1 || server_fd < 0 || stack == NULL || connection == NULL ||
            reply == NULL || reset == NULL || reset_count < 0) {
            PyErr_SetString(PyExc_ValueError,
                            "a warm relay needs a server socket, a stack, the connection, "
                            "its login reply and its reset, and no client yet");
            return -1;
        }
    } else if (client_fd < 0 || server_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "a relay needs two open sockets");
        return -1;
    }
    Py_INCREF(tracker);
    Py_XSETREF(self->tracker, (Tracker *)tracker);
    Py_INCREF(client);
    Py_XSETREF(self->transports[0], client);
    Py_INCREF(server);
    Py_XSETREF(self->transports[1], server);
    for (int i = 0; i < 2; i++) {
        PyObject *fd = PyLong_FromLong(i == 0 ? client_fd : server_fd);
        if (fd == NULL)
            return -1;
        Py_XSETREF(self->fd_objs[i], fd);
    }
    Py_INCREF(writes);
    Py_XSETREF(self->writes, writes);
    Py_INCREF(on_terminate);
    Py_XSETREF(self->on_terminate, on_terminate);
    self->fds[0] = client_fd;
    self->fds[1] = server_fd;
    self->received = 0;
    Py_XINCREF(lane);
    Py_XSETREF(self->lane, (struct Lane *)lane);
    Py_XINCREF(stack);
    Py_XSETREF(self->stack, stack);
    Py_XINCREF(connection);
    Py_XSETREF(self->server, connection);
    Py_XINCREF(reply);
    Py_XSETREF(self->reply, reply);
    Py_XINCREF(reset);
    Py_XSETREF(self->reset, reset);
    self->reset_count = reset_count;
    self->uses_left = uses_left;
    self->uses = 0;
    self->wstate = W_PARKED;
    self->pid = (uint32_t)pid;
    self->secret = 0;
    self->parked_at = monotonic_s();
    self->rlen = 0;
    return 0;
}

static int
relay_traverse(Relay *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tracker);
    Py_VISIT(self->transports[0]);
    Py_VISIT(self->transports[1]);
    Py_VISIT(self->writes);
    Py_VISIT(self->on_terminate);
    Py_VISIT(self->lane);
    Py_VISIT(self->stack);
    Py_VISIT(self->server);
    return 0;
}

static int
relay_clear(Relay *self)
{
    Py_CLEAR(self->tracker);
    Py_CLEAR(self->transports[0]);
    Py_CLEAR(self->transports[1]);
    Py_CLEAR(self->fd_objs[0]);
    Py_CLEAR(self->fd_objs[1]);
    Py_CLEAR(self->writes);
    Py_CLEAR(self->on_terminate);
    Py_CLEAR(self->lane);
    Py_CLEAR(self->stack);
    Py_CLEAR(self->server);
    Py_CLEAR(self->reply);
    Py_CLEAR(self->reset);
    return 0;
}

static void
relay_dealloc(Relay *self)
{
    PyObject_GC_UnTrack(self);
    relay_clear(self);
    PyMem_Free(self->rbuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
relay_get_received(Relay *self, void *closure)
{
    return PyLong_FromLong(self->received);
}

static PyObject *
relay_get_fds(Relay *self, void *closure)
{
    return Py_BuildValue("(ii)", self->fds[0], self->fds[1]);
}

static PyObject *
relay_get_state(Relay *self, void *closure)
{
    return PyLong_FromLong(self->wstate);
}

static PyObject *
relay_get_uses(Relay *self, void *closure)
{
    return PyLong_FromLong(self->uses);
}

static PyObject *
relay_get_parked_at(Relay *self, void *closure)
{
    return PyFloat_FromDouble(self->parked_at);
}

static PyObject *
relay_get_secret(Relay *self, void *closure)
{
    return PyLong_FromLong((long)(int32_t)self->secret);
}

static PyObject *
relay_get_object(PyObject *value)
{
    PyObject *result = value != NULL ? value : Py_None;
    Py_INCREF(result);
    return result;
}

static PyObject *
relay_get_connection(Relay *self, void *closure)
{
    return relay_get_object(self->server);
}

static PyObject *
relay_get_tracker(Relay *self, void *closure)
{
    return relay_get_object((PyObject *)self->tracker);
}

static PyGetSetDef relay_getset[] = {
    {"received", (getter)relay_get_received, NULL,
     "Client chunks forwarded by the C loop.", NULL},
    {"fds", (getter)relay_get_fds, NULL, "(client fd, server fd)", NULL},
    {"state", (getter)relay_get_state, NULL, "A warm relay's state (W_PARKED...).", NULL},
    {"uses", (getter)relay_get_uses, NULL, "Sessions a warm relay started.", NULL},
    {"parked_at", (getter)relay_get_parked_at, NULL,
     "When a warm relay last parked (time.monotonic's clock).", NULL},
    {"secret", (getter)relay_get_secret, NULL,
     "The cancel key of a warm relay's current client.", NULL},
    {"connection", (getter)relay_get_connection, NULL,
     "A warm relay's server connection.", NULL},
    {"tracker", (getter)relay_get_tracker, NULL, "The session tracker.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *relay_promote(Relay *self, PyObject *unused);
static PyObject *relay_drop(Relay *self, PyObject *arg);

static PyMethodDef relay_methods[] = {
    {"promote", (PyCFunction)relay_promote, METH_NOARGS,
     "Hand an active warm session's client socket to Python (on_event PROMOTE)."},
    {"drop", (PyCFunction)relay_drop, METH_O,
     "drop(last_words): Python takes the server back; an active session's client gets "
     "the last words and is closed."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw._speedups.Relay",
    .tp_doc = "One attached session's two sockets, forwarded by poll() while registered.",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)relay_init,
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_traverse = (traverseproc)relay_traverse,
    .tp_clear = (inquiry)relay_clear,
    .tp_getset = relay_getset,
    .tp_methods = relay_methods,
};

/* ------------------------------------------------------------------------- */
/* The slot table: what poll() does with each descriptor's events             */
/* ------------------------------------------------------------------------- */

enum { SIDE_CLIENT = 0, SIDE_SERVER = 1, SIDE_LISTEN = 2, SIDE_PENDING = 3 };

#define PENDING_MAX 1024

/* A client a lane accepted, until its startup packet is read. */
typedef struct {
    int listen_fd;
    int answered; /* 1: its SSLRequest was answered, 2: its GSSENCRequest */
    unsigned generation;
    int len;
    int addr_len;
    unsigned char addr[16];
    unsigned char buf[PENDING_MAX];
} Pending;

typedef struct {
    Relay *relay;      /* SIDE_CLIENT, SIDE_SERVER */
    struct Lane *lane; /* SIDE_LISTEN, SIDE_PENDING */
    Pending *pending;  /* SIDE_PENDING */
    int side;
} Slot;

static Slot *slots = NULL;
static int slots_size = 0;
static struct epoll_event *events = NULL;
static int events_size = 0;
static unsigned char recv_buffer[RECV_SIZE];
/* Set when a pump ran Python code, which may have scheduled work for Twisted. */
static int ran_python = 0;

static PyObject *str_write;

static int
slots_reserve(int fd)
{
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "bad fd");
        return -1;
    }
    if (fd < slots_size)
        return 0;
    int size = slots_size ? slots_size : 1024;
    while (size <= fd)
        size *= 2;
    Slot *grown = PyMem_Realloc(slots, sizeof(Slot) * (size_t)size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(grown + slots_size, 0, sizeof(Slot) * (size_t)(size - slots_size));
    slots = grown;
    slots_size = size;
    return 0;
}

/* Forget what `fd` was registered as (its Pending is freed). */
static void
slot_clear(int fd)
{
    if (fd < 0 || fd >= slots_size)
        return;
    Slot old = slots[fd];
    memset(&slots[fd], 0, sizeof(Slot));
    PyMem_Free(old.pending);
    Py_XDECREF(old.relay);
    Py_XDECREF((PyObject *)old.lane);
}

static int
slot_set_relay(int fd, Relay *relay, int side)
{
    if (slots_reserve(fd) < 0)
        return -1;
    Py_INCREF(relay);
    slot_clear(fd);
    slots[fd].relay = relay;
    slots[fd].side = side;
    return 0;
}

/* The server slot of `r`, if it still is r's. */
static void
slot_clear_server(Relay *r)
{
    int fd = r->fds[1];
    if (fd >= 0 && fd < slots_size && slots[fd].relay == r)
        slot_clear(fd);
}

static PyObject *
speedups_register(PyObject *module, PyObject *args)
{
    int fd, side;
    PyObject *relay;
    if (!PyArg_ParseTuple(args, "iO!i", &fd, &RelayType, &relay, &side))
        return NULL;
    if (fd < 0 || (side != SIDE_CLIENT && side != SIDE_SERVER)) {
        PyErr_SetString(PyExc_ValueError, "bad fd or side");
        return NULL;
    }
    if (((Relay *)relay)->tracker == NULL) {
        PyErr_SetString(PyExc_ValueError, "the relay was never initialised");
        return NULL;
    }
    if (((Relay *)relay)->lane != NULL) {
        PyErr_SetString(PyExc_ValueError, "a warm relay is its lane's to register");
        return NULL;
    }
    if (slot_set_relay(fd, (Relay *)relay, side) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
speedups_unregister(PyObject *module, PyObject *args)
{
    int fd;
    PyObject *relay;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &RelayType, &relay))
        return NULL;
    if (fd >= 0 && fd < slots_size && slots[fd].relay == (Relay *)relay)
        slot_clear(fd);
    Py_RETURN_NONE;
}

/*
 * Twisted has nothing queued for this peer, so sending now keeps the order.
 * Twisted's write() always registers the socket for writability (startWriting)
 * and only its doWrite, once everything went out, unregisters it; loseConnection
 * registers it too.  So "not in the reactor's write set" means no bytes are
 * queued and no close is pending: the three checks of transport.make_writer, in
 * one lookup in a small set that stays in cache however many clients there are.
 */
static int
clear_to_send(Relay *r, int peer)
{
    int busy = PySet_Contains(r->writes, r->fd_objs[peer]);
    return busy < 0 ? -1 : !busy;
}

/* Send now; what the kernel does not take goes to Twisted's write(). */
static int
send_now(int fd, PyObject *transport, const unsigned char *data, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    ssize_t sent = send(fd, data, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0)
        sent = 0; /* EAGAIN, or an error Twisted's own write path will report */
    if (sent == n)
        return 0;
    ran_python = 1;
    PyObject *rest = PyBytes_FromStringAndSize((const char *)data + sent, n - sent);
    if (rest == NULL)
        return -1;
    PyObject *res = PyObject_CallMethodObjArgs(transport, str_write, rest, NULL);
    Py_DECREF(rest);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

enum { PUMPED = 0, TO_TWISTED = 1, TO_TWISTED_ERROR = 2 };

#define AGAIN (-2)

/* recv into recv_buffer: the byte count, 0 at end of file, -1 on an error, AGAIN. */
static ssize_t
recv_chunk(int fd)
{
    ssize_t n = recv(fd, recv_buffer, RECV_SIZE, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return AGAIN;
    return n;
}

/* A client chunk in recv_buffer, sent on up to a Terminate: 1 when it held one. */
static int
forward_client(Relay *r, ssize_t n)
{
    r->received++;
    Py_ssize_t at = feed_client_raw(r->tracker, recv_buffer, n);
    if (send_now(r->fds[1], r->transports[1], recv_buffer, at < 0 ? n : at) < 0)
        return -1;
    return at >= 0;
}

/* One readable event of a registered socket.  -1 on a Python error. */
static int
pump(Relay *r, int side)
{
    int peer = 1 - side;
    int clear = clear_to_send(r, peer);
    if (clear <= 0)
        return clear < 0 ? -1 : TO_TWISTED;
    ssize_t n = recv_chunk(r->fds[side]);
    if (n == AGAIN)
        return PUMPED;
    if (n < 0)
        return TO_TWISTED_ERROR;
    if (n == 0)
        return TO_TWISTED; /* end of file: Twisted's read sees it again */
    if (side == 0) {
        int terminated = forward_client(r, n);
        if (terminated < 0)
            return -1;
        if (terminated) {
            ran_python = 1;
            PyObject *res = PyObject_CallNoArgs(r->on_terminate);
            if (res == NULL)
                return -1;
            Py_DECREF(res);
        }
        return PUMPED;
    }
    int rc = feed_server_raw(r->tracker, recv_buffer, n);
    /* The bytes go to the client even if recording a parameter failed. */
    if (send_now(r->fds[0], r->transports[0], recv_buffer, n) < 0 || rc < 0)
        return -1;
    return PUMPED;
}

/* ------------------------------------------------------------------------- */
/* Lane: warm logins without Python                                           */
/* ------------------------------------------------------------------------- */

/*
 * A client that connects once per transaction (pgbench -C, PHP, short scripts)
 * costs the pooler a whole login: on Twisted's path some 300 Python calls, about
 * twice PgBouncer's CPU per connection.  A Lane serves the common case of such a
 * login in C, the way PgBouncer does, and leaves every decision to Python:
 *
 * - Python lends it listening sockets (it accepts on them) and pooled server
 *   connections: each is a warm Relay parked on a list (a "stack") that
 *   `entries` maps from a client address and startup packet, byte for byte, to.
 *   Python adds an entry only after it logged such a client in itself and found
 *   it needed nothing the lane cannot give: no TLS, no password, no message of
 *   its own.  Python takes entries and parked relays back whenever it wants.
 * - An accepted client's SSLRequest (when the pooler has no TLS) and
 *   GSSENCRequest get their 'N' here.  A startup packet that hits an entry with
 *   a parked relay, while a client slot is free, takes the relay: the client
 *   gets AuthenticationOk, the connection's ParameterStatus messages, a random
 *   cancel key and ReadyForQuery, and the session is relayed like any other.
 *   Anything else (no entry, an empty stack, a CancelRequest, TLS, a packet cut
 *   oddly) is a miss: the socket and the bytes read go to on_miss, and Python's
 *   login takes over as if Twisted had accepted the client.
 * - A Terminate on a session that is in sync and idle and changed no parameter
 *   sends the reset queries; once they all answered without an error, the
 *   relay parks again.  Any other end (an unclean one, a failed reset, a
 *   changed parameter, the connection's session limit) goes to on_event, and
 *   the pool decides as on Twisted's path.
 * - A client the kernel cannot take a send from, or whose server has bytes
 *   queued in Twisted, is promoted: its socket goes to Python, which carries
 *   the session on with a Twisted transport.
 *
 * Pending clients time out by sweep(): Python calls it every
 * authentication_timeout, and a client still pending at the next sweep is closed.
 */

enum { EV_ENDED = 1, EV_RESET = 2, EV_PROMOTE = 3, EV_LEFT = 4, EV_LISTENER = 5 };

#define SSL_REQUEST_CODE 80877103u
#define GSSENC_REQUEST_CODE 80877104u
#define PROTOCOL_3 196608u
#define RESET_REPLY_MAX 65536

typedef struct Lane {
    PyObject_HEAD
    int epfd;
    PyObject *entries; /* address + startup packet -> list of parked warm relays */
    PyObject *on_miss;  /* on_miss(fd, listen_fd, data, answered) */
    PyObject *on_event; /* on_event(kind, relay, data) */
    int answer_ssl;     /* SSLRequest gets 'N' here (the pooler has no TLS) */
    int closing;
    int wake;       /* call on_event(EV_LEFT) when a session ends (clients wait) */
    long limit;     /* client sessions at once, the lane's and Python's */
    long outside;   /* Python's own sessions */
    long active, pending, hits, misses;
    unsigned generation;
    int random_left;
    unsigned char random[256];
} Lane;

static int
lane_call(Lane *lane, int kind, PyObject *relay, PyObject *data)
{
    ran_python = 1;
    PyObject *res = PyObject_CallFunction(lane->on_event, "iOO", kind,
                                          relay != NULL ? relay : Py_None,
                                          data != NULL ? data : Py_None);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static int
lane_random(Lane *lane, uint32_t *out)
{
    if (lane->random_left < 4) {
        if (getrandom(lane->random, sizeof(lane->random), 0) != (ssize_t)sizeof(lane->random))
            return -1;
        lane->random_left = (int)sizeof(lane->random);
    }
    lane->random_left -= 4;
    memcpy(out, lane->random + lane->random_left, 4);
    memset(lane->random + lane->random_left, 0, 4);
    return 0;
}

/* The client's socket is closed; the session counts no more. */
static int
warm_client_closed(Relay *r)
{
    Lane *lane = r->lane;
    int fd = r->fds[0];
    r->fds[0] = -1;
    if (fd >= 0) {
        slot_clear(fd);
        close(fd);
    }
    lane->active--;
    return lane->wake ? lane_call(lane, EV_LEFT, NULL, NULL) : 0;
}

/* The server connection goes back to Python; the pool decides its fate. */
static int
warm_return(Relay *r, int kind, PyObject *data)
{
    slot_clear_server(r);
    r->wstate = W_RETURNED;
    return lane_call(r->lane, kind, (PyObject *)r, data);
}

static int
warm_park(Relay *r)
{
    if (r->lane->closing)
        return warm_return(r, EV_RESET, Py_True); /* a shutdown: the pool decides */
    slot_clear_server(r); /* parked: Twisted watches the server again */
    r->wstate = W_PARKED;
    r->parked_at = monotonic_s();
    return PyList_Append(r->stack, (PyObject *)r);
}

/* The client went away without a Terminate. */
static int
warm_gone(Relay *r)
{
    int rc = warm_client_closed(r);
    if (warm_return(r, EV_ENDED, Py_False) < 0)
        rc = -1;
    return rc;
}

/* Python carries the session on: it gets the client's socket and what it is owed. */
static int
warm_promote(Relay *r, const unsigned char *rest, Py_ssize_t n)
{
    Lane *lane = r->lane;
    int fd = r->fds[0];
    struct epoll_event unused = {0};
    epoll_ctl(lane->epfd, EPOLL_CTL_DEL, fd, &unused);
    slot_clear(fd);
    slot_clear_server(r);
    r->fds[0] = -1;
    r->wstate = W_RETURNED;
    lane->active--;
    PyObject *data = Py_BuildValue("(iy#)", fd, rest != NULL ? (const char *)rest : "", n);
    if (data == NULL)
        return -1;
    int rc = lane_call(lane, EV_PROMOTE, (PyObject *)r, data);
    Py_DECREF(data);
    return rc;
}

/* Send to the warm client; what the kernel does not take promotes the session. */
static int
warm_send_client(Relay *r, const unsigned char *data, Py_ssize_t n)
{
    ssize_t sent = send(r->fds[0], data, (size_t)n, MSG_NOSIGNAL);
    if (sent == n)
        return 0;
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return warm_gone(r);
        sent = 0;
    }
    return warm_promote(r, data + sent, n - sent);
}

/* The client's Terminate: reset and park, or let the pool decide. */
static int
warm_ended(Relay *r)
{
    Tracker *t = r->tracker;
    int reusable = tracker_in_sync_c(t) && t->status == IDLE && !t->changed &&
                   r->uses_left != 0 && !r->lane->closing;
    int rc = warm_client_closed(r);
    if (!reusable) {
        if (warm_return(r, EV_ENDED, Py_True) < 0)
            rc = -1;
        return rc;
    }
    if (r->reset_count == 0)
        return warm_park(r) < 0 ? -1 : rc;
    r->wstate = W_RESETTING;
    r->awaiting = r->reset_count;
    r->reset_ok = 1;
    r->rlen = 0;
    if (send_now(r->fds[1], r->transports[1], (const unsigned char *)PyBytes_AS_STRING(r->reset),
                 PyBytes_GET_SIZE(r->reset)) < 0)
        rc = -1;
    return rc;
}

/* The reset's answer: whole messages are read; the last ReadyForQuery decides. */
static int
warm_reset_reply(Relay *r, const unsigned char *data, Py_ssize_t n)
{
    Tracker *t = r->tracker;
    if (r->rlen + n > r->rcap) {
        Py_ssize_t cap = r->rcap ? r->rcap : 256;
        while (cap < r->rlen + n)
            cap *= 2;
        unsigned char *grown = PyMem_Realloc(r->rbuf, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->rbuf = grown;
        r->rcap = cap;
    }
    memcpy(r->rbuf + r->rlen, data, (size_t)n);
    r->rlen += n;
    Py_ssize_t pos = 0;
    while (r->rlen - pos >= 5) {
        const unsigned char *p = r->rbuf + pos;
        int64_t length = length_at(p + 1);
        if (length < 4 || length > RESET_REPLY_MAX) {
            r->rlen = 0;
            return warm_return(r, EV_RESET, Py_False);
        }
        if (pos + 1 + length > r->rlen)
            break;
        int kind = p[0];
        if (kind == 'E' || kind == 'G' || kind == 'H' || kind == 'W') {
            r->reset_ok = 0; /* a failed query, or COPY: the stream is not to be trusted */
        } else if (kind == S_PARAMETER_STATUS) {
            if (parameter_status(t, p + 5, (Py_ssize_t)length - 4) < 0)
                return -1;
        } else if (kind == S_READY) {
            t->status = length > 4 ? p[5] : IDLE;
            r->awaiting--;
        }
        pos += 1 + length;
        if (r->awaiting == 0) {
            int whole = pos == r->rlen; /* nothing may follow the last ReadyForQuery */
            int clean = r->reset_ok && t->status == IDLE && whole;
            r->rlen = 0;
            if (clean && !t->changed)
                return warm_park(r);
            return warm_return(r, EV_RESET, clean ? Py_True : Py_False);
        }
    }
    if (pos) {
        memmove(r->rbuf, r->rbuf + pos, (size_t)(r->rlen - pos));
        r->rlen -= pos;
    }
    if (r->rlen > RESET_REPLY_MAX) {
        r->rlen = 0;
        return warm_return(r, EV_RESET, Py_False);
    }
    return 0;
}

/* One event of a warm relay's socket.  -1 on a Python error. */
static int
warm_event(Relay *r, int side, unsigned int ev)
{
    if (side == SIDE_CLIENT) {
        if (r->wstate != W_ACTIVE)
            return PUMPED;
        if (!(ev & EPOLLIN))
            return warm_gone(r) < 0 ? -1 : PUMPED;
        int clear = clear_to_send(r, 1);
        if (clear <= 0)
            return clear < 0 || warm_promote(r, NULL, 0) < 0 ? -1 : PUMPED;
        ssize_t n = recv_chunk(r->fds[0]);
        if (n == AGAIN)
            return PUMPED;
        if (n <= 0)
            return warm_gone(r) < 0 ? -1 : PUMPED;
        int terminated = forward_client(r, n);
        if (terminated > 0)
            return warm_ended(r) < 0 ? -1 : PUMPED;
        return terminated < 0 ? -1 : PUMPED;
    }
    if (ev != EPOLLIN)
        return TO_TWISTED; /* the server's hang-up or error: its protocol reports it */
    ssize_t n = recv_chunk(r->fds[1]);
    if (n == AGAIN)
        return PUMPED;
    if (n < 0)
        return TO_TWISTED_ERROR;
    if (n == 0)
        return TO_TWISTED;
    if (r->wstate == W_RESETTING)
        return warm_reset_reply(r, recv_buffer, n) < 0 ? -1 : PUMPED;
    int rc = feed_server_raw(r->tracker, recv_buffer, n);
    if (warm_send_client(r, recv_buffer, n) < 0 || rc < 0)
        return -1;
    return PUMPED;
}

static PyObject *
relay_promote(Relay *self, PyObject *unused)
{
    if (self->lane == NULL || self->wstate != W_ACTIVE) {
        PyErr_SetString(PyExc_ValueError, "only an active warm relay can be promoted");
        return NULL;
    }
    if (warm_promote(self, NULL, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
relay_drop(Relay *self, PyObject *arg)
{
    if (self->lane == NULL) {
        PyErr_SetString(PyExc_ValueError, "only a warm relay can be dropped");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int active = self->wstate == W_ACTIVE;
    if (active && view.len > 0) /* last words, if the kernel takes them */
        (void)send(self->fds[0], view.buf, (size_t)view.len, MSG_NOSIGNAL);
    PyBuffer_Release(&view);
    slot_clear_server(self);
    self->wstate = W_RETURNED;
    self->rlen = 0;
    if (active && warm_client_closed(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Close a client that never finished its startup packet. */
static void
pending_close(Lane *lane, int fd)
{
    slot_clear(fd);
    close(fd);
    lane->pending--;
}

/* Python's login takes the client over, with what was read (and answered) so far. */
static int
pending_miss(Lane *lane, int fd)
{
    Pending *p = slots[fd].pending;
    PyObject *args = Py_BuildValue("(iiy#i)", fd, p->listen_fd, (const char *)p->buf,
                                   (Py_ssize_t)p->len, p->answered);
    if (args == NULL)
        return -1;
    struct epoll_event unused = {0};
    epoll_ctl(lane->epfd, EPOLL_CTL_DEL, fd, &unused);
    Py_INCREF(lane); /* the slot's reference goes */
    slot_clear(fd);
    lane->pending--;
    lane->misses++;
    ran_python = 1;
    PyObject *res = PyObject_Call(lane->on_miss, args, NULL);
    Py_DECREF(args);
    Py_DECREF(lane);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* A whole startup packet: a warm login, or a miss. */
static int
pending_startup(Lane *lane, int fd, Pending *p)
{
    if (lane->closing || lane->active + lane->outside >= lane->limit)
        return pending_miss(lane, fd);
    PyObject *key = PyBytes_FromStringAndSize(NULL, p->addr_len + p->len);
    if (key == NULL)
        return -1;
    memcpy(PyBytes_AS_STRING(key), p->addr, (size_t)p->addr_len);
    memcpy(PyBytes_AS_STRING(key) + p->addr_len, p->buf, (size_t)p->len);
    PyObject *stack = PyDict_GetItemWithError(lane->entries, key);
    Py_DECREF(key);
    if (stack == NULL && PyErr_Occurred())
        return -1;
    Py_ssize_t size = stack != NULL && PyList_Check(stack) ? PyList_GET_SIZE(stack) : 0;
    if (size == 0)
        return pending_miss(lane, fd);
    uint32_t secret;
    if (lane_random(lane, &secret) < 0)
        return pending_miss(lane, fd);
    PyObject *item = PyList_GET_ITEM(stack, size - 1);
    Py_INCREF(item);
    if (PyList_SetSlice(stack, size - 1, size, NULL) < 0) {
        Py_DECREF(item);
        return -1;
    }
    Relay *r = (Relay *)item;
    if (!PyObject_TypeCheck(item, &RelayType) || r->lane != lane || r->wstate != W_PARKED) {
        Py_DECREF(item); /* not something Python lends: dropped */
        return pending_miss(lane, fd);
    }
    /* The client's socket is the relay's now; both are watched as one session. */
    if (slot_set_relay(fd, r, SIDE_CLIENT) < 0 || slot_set_relay(r->fds[1], r, SIDE_SERVER) < 0) {
        Py_DECREF(item);
        return -1;
    }
    lane->pending--;
    lane->active++;
    lane->hits++;
    r->fds[0] = fd;
    r->wstate = W_ACTIVE;
    r->secret = secret;
    r->received = 0;
    r->uses++;
    if (r->uses_left > 0)
        r->uses_left--;
    Tracker *t = r->tracker;
    t->pending = 0;
    t->unsynced = 0;
    t->status = IDLE;
    t->c_skip = t->s_skip = t->s_need = 0;
    t->c_head_len = t->s_head_len = 0;
    t->s_body_len = 0;
    t->changed = 0;
    /* The end of the login, as a direct connection sends it. */
    Py_ssize_t reply_len = PyBytes_GET_SIZE(r->reply);
    Py_ssize_t n = reply_len + 13 + 6;
    unsigned char small[2048];
    unsigned char *out = n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)n);
    if (out == NULL) {
        Py_DECREF(item);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(r->reply), (size_t)reply_len);
    unsigned char *k = out + reply_len;
    uint32_t pid = r->pid;
    const unsigned char tail[19] = {
        'K', 0, 0, 0, 12,
        (unsigned char)(pid >> 24), (unsigned char)(pid >> 16), (unsigned char)(pid >> 8),
        (unsigned char)pid,
        (unsigned char)(secret >> 24), (unsigned char)(secret >> 16),
        (unsigned char)(secret >> 8), (unsigned char)secret,
        'Z', 0, 0, 0, 5, IDLE,
    };
    memcpy(k, tail, sizeof(tail));
    int rc = warm_send_client(r, out, n);
    if (out != small)
        PyMem_Free(out);
    Py_DECREF(item);
    return rc;
}

/* One event of a client the lane accepted and has not logged in yet. */
static int
pending_event(Lane *lane, int fd, unsigned int ev)
{
    Pending *p = slots[fd].pending;
    if (!(ev & EPOLLIN)) {
        pending_close(lane, fd);
        return 0;
    }
    ssize_t n = recv(fd, p->buf + p->len, (size_t)(PENDING_MAX - p->len), 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (n <= 0) {
        pending_close(lane, fd);
        return 0;
    }
    p->len += (int)n;
    for (;;) {
        if (p->len < 8) {
            if (p->len >= 4 && length_at(p->buf) < 8)
                return pending_miss(lane, fd); /* Python's login names the error */
            return 0;
        }
        int64_t length = length_at(p->buf);
        if (length < 8 || length > PENDING_MAX)
            return pending_miss(lane, fd);
        if (p->len < length)
            return 0;
        uint32_t code = (uint32_t)length_at(p->buf + 4);
        int request = 0;
        if (length == 8 && code == SSL_REQUEST_CODE && !(p->answered & 1) && lane->answer_ssl)
            request = 1;
        else if (length == 8 && code == GSSENC_REQUEST_CODE && !(p->answered & 2))
            request = 2;
        if (request) {
            if (send(fd, "N", 1, MSG_NOSIGNAL) != 1) {
                pending_close(lane, fd);
                return 0;
            }
            p->answered |= request;
            p->len -= 8;
            memmove(p->buf, p->buf + 8, (size_t)p->len);
            continue;
        }
        if (code == PROTOCOL_3 && p->len == length)
            return pending_startup(lane, fd, p);
        return pending_miss(lane, fd);
    }
}

/* The listening socket is readable: accept what is there. */
static int
lane_accept(Lane *lane, int listen_fd)
{
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage sa;
        socklen_t salen = sizeof(sa);
        int fd = accept4(listen_fd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            /* EMFILE and the like: Twisted's accept knows how to shed that load. */
            struct epoll_event unused = {0};
            epoll_ctl(lane->epfd, EPOLL_CTL_DEL, listen_fd, &unused);
            Py_INCREF(lane);
            slot_clear(listen_fd);
            PyObject *which = PyLong_FromLong(listen_fd);
            int rc = which == NULL ? -1 : lane_call(lane, EV_LISTENER, NULL, which);
            Py_XDECREF(which);
            Py_DECREF(lane);
            return rc;
        }
        Pending *p = PyMem_Malloc(sizeof(Pending));
        if (p == NULL || slots_reserve(fd) < 0) {
            PyMem_Free(p);
            close(fd);
            if (!PyErr_Occurred())
                PyErr_NoMemory();
            return -1;
        }
        p->listen_fd = listen_fd;
        p->answered = 0;
        p->generation = lane->generation;
        p->len = 0;
        p->addr_len = 0;
        if (sa.ss_family == AF_INET) {
            p->addr_len = 4;
            memcpy(p->addr, &((struct sockaddr_in *)&sa)->sin_addr, 4);
        } else if (sa.ss_family == AF_INET6) {
            p->addr_len = 16;
            memcpy(p->addr, &((struct sockaddr_in6 *)&sa)->sin6_addr, 16);
        }
        struct epoll_event want = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(lane->epfd, EPOLL_CTL_ADD, fd, &want) < 0) {
            PyMem_Free(p);
            close(fd);
            continue;
        }
        slot_clear(fd);
        Py_INCREF(lane);
        slots[fd].lane = lane;
        slots[fd].pending = p;
        slots[fd].side = SIDE_PENDING;
        lane->pending++;
    }
    return 0;
}

static PyObject *
lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Lane *self = (Lane *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epfd = -1;
    self->entries = PyDict_New();
    if (self->entries == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"epfd", "on_miss", "on_event", NULL};
    PyObject *on_miss, *on_event;
    int epfd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOO", kwlist, &epfd, &on_miss, &on_event))
        return -1;
    self->epfd = epfd;
    Py_INCREF(on_miss);
    Py_XSETREF(self->on_miss, on_miss);
    Py_INCREF(on_event);
    Py_XSETREF(self->on_event, on_event);
    self->answer_ssl = 1;
    self->limit = 0;
    return 0;
}

static int
lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->entries);
    Py_VISIT(self->on_miss);
    Py_VISIT(self->on_event);
    return 0;
}

static int
lane_clear(Lane *self)
{
    Py_CLEAR(self->entries);
    Py_CLEAR(self->on_miss);
    Py_CLEAR(self->on_event);
    return 0;
}

static void
lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
lane_owns(Lane *self, int fd, int side)
{
    return fd >= 0 && fd < slots_size && slots[fd].lane == self && slots[fd].side == side;
}

static PyObject *
lane_listen(Lane *self, PyObject *arg)
{
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (slots_reserve(fd) < 0)
        return NULL;
    struct epoll_event want = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &want) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    slot_clear(fd);
    Py_INCREF(self);
    slots[fd].lane = self;
    slots[fd].side = SIDE_LISTEN;
    Py_RETURN_NONE;
}

static PyObject *
lane_unlisten(Lane *self, PyObject *arg)
{
    int fd = (int)PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (lane_owns(self, fd, SIDE_LISTEN)) {
        struct epoll_event unused = {0};
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, &unused);
        slot_clear(fd);
    }
    Py_RETURN_NONE;
}

/* Close pending clients: all (`all`), or those already pending at the last sweep. */
static long
lane_close_pending(Lane *self, int all)
{
    long closed = 0;
    for (int fd = 0; fd < slots_size; fd++) {
        if (lane_owns(self, fd, SIDE_PENDING) &&
            (all || slots[fd].pending->generation != self->generation)) {
            pending_close(self, fd);
            closed++;
        }
    }
    return closed;
}

static PyObject *
lane_sweep(Lane *self, PyObject *unused)
{
    long closed = lane_close_pending(self, 0);
    self->generation++;
    return PyLong_FromLong(closed);
}

static PyObject *
lane_drop_pending(Lane *self, PyObject *unused)
{
    return PyLong_FromLong(lane_close_pending(self, 1));
}

static PyObject *
lane_sessions(Lane *self, PyObject *unused)
{
    PyObject *result = PyList_New(0);
    if (result == NULL)
        return NULL;
    for (int fd = 0; fd < slots_size; fd++) {
        Relay *r = slots[fd].relay;
        if (r != NULL && slots[fd].side == SIDE_CLIENT && r->lane == self &&
            r->wstate == W_ACTIVE && PyList_Append(result, (PyObject *)r) < 0) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}

static PyObject *
lane_find(Lane *self, PyObject *args)
{
    long long pid, secret;
    if (!PyArg_ParseTuple(args, "LL", &pid, &secret))
        return NULL;
    for (int fd = 0; fd < slots_size; fd++) {
        Relay *r = slots[fd].relay;
        if (r != NULL && slots[fd].side == SIDE_CLIENT && r->lane == self &&
            r->wstate == W_ACTIVE && r->pid == (uint32_t)pid && r->secret == (uint32_t)secret)
            return relay_get_object(r->server);
    }
    Py_RETURN_NONE;
}

static PyObject *
lane_get_entries(Lane *self, void *closure)
{
    return relay_get_object(self->entries);
}

#define LANE_GET(name)                                                                \
    static PyObject *lane_get_##name(Lane *self, void *closure)                       \
    {                                                                                 \
        return PyLong_FromLong((long)self->name);                                     \
    }
#define LANE_SET(name)                                                                \
    static int lane_set_##name(Lane *self, PyObject *value, void *closure)            \
    {                                                                                 \
        long v = value != NULL ? PyLong_AsLong(value) : -1;                           \
        if (v == -1 && (value == NULL || PyErr_Occurred())) {                         \
            if (!PyErr_Occurred())                                                    \
                PyErr_SetString(PyExc_AttributeError, "cannot delete " #name);        \
            return -1;                                                                \
        }                                                                             \
        self->name = v;                                                               \
        return 0;                                                                     \
    }

LANE_GET(answer_ssl)
LANE_SET(answer_ssl)
LANE_GET(closing)
LANE_SET(closing)
LANE_GET(wake)
LANE_SET(wake)
LANE_GET(limit)
LANE_SET(limit)
LANE_GET(outside)
LANE_SET(outside)
LANE_GET(active)
LANE_GET(pending)
LANE_GET(hits)
LANE_GET(misses)

#define LANE_RW(name, doc) {#name, (getter)lane_get_##name, (setter)lane_set_##name, doc, NULL}
#define LANE_RO(name, doc) {#name, (getter)lane_get_##name, NULL, doc, NULL}

static PyGetSetDef lane_getset[] = {
    {"entries", (getter)lane_get_entries, NULL,
     "address + startup packet -> the list of warm relays parked for such clients", NULL},
    LANE_RW(answer_ssl, "Answer SSLRequest with 'N' here (the pooler has no TLS)."),
    LANE_RW(closing, "Log nobody in and park nothing (a shutdown)."),
    LANE_RW(wake, "Call on_event(EV_LEFT) when a session ends (clients wait for a slot)."),
    LANE_RW(limit, "Client sessions at once, the lane's and Python's together."),
    LANE_RW(outside, "Python's own client sessions."),
    LANE_RO(active, "Warm sessions relayed now."),
    LANE_RO(pending, "Accepted clients whose startup packet is not read yet."),
    LANE_RO(hits, "Clients logged in here."),
    LANE_RO(misses, "Clients handed to on_miss."),
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef lane_methods[] = {
    {"listen", (PyCFunction)lane_listen, METH_O,
     "listen(fd): accept on this listening socket (Twisted must not watch it)."},
    {"unlisten", (PyCFunction)lane_unlisten, METH_O,
     "unlisten(fd): stop accepting on it (no-op if not listening)."},
    {"sweep", (PyCFunction)lane_sweep, METH_NOARGS,
     "Close clients pending since the last sweep; returns how many."},
    {"drop_pending", (PyCFunction)lane_drop_pending, METH_NOARGS,
     "Close every pending client; returns how many."},
    {"sessions", (PyCFunction)lane_sessions, METH_NOARGS,
     "The warm relays with a client now."},
    {"find", (PyCFunction)lane_find, METH_VARARGS,
     "find(pid, secret): the server connection a warm session's cancel key points at."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw._speedups.Lane",
    .tp_doc = "Warm logins served by poll() without Python (see _speedups.c).",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = lane_new,
    .tp_init = (initproc)lane_init,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_getset = lane_getset,
    .tp_methods = lane_methods,
};

/* ------------------------------------------------------------------------- */
/* poll()                                                                     */
/* ------------------------------------------------------------------------- */

static int64_t
monotonic_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* One event, handled here (PUMPED) or left for Twisted.  -1 on a Python error. */
static int
dispatch(int fd, unsigned int ev, PyObject **culprit)
{
    if (fd < 0 || fd >= slots_size)
        return TO_TWISTED;
    Slot *slot = &slots[fd];
    if (slot->relay != NULL) {
        Relay *relay = slot->relay;
        int side = slot->side;
        int how = TO_TWISTED;
        Py_INCREF(relay); /* Python called from here may unregister it */
        if (relay->lane != NULL)
            how = warm_event(relay, side, ev);
        else if (ev == EPOLLIN)
            how = pump(relay, side);
        if (how < 0)
            *culprit = (PyObject *)relay;
        else
            Py_DECREF(relay);
        return how;
    }
    if (slot->lane != NULL) {
        Lane *lane = slot->lane;
        Py_INCREF(lane);
        int rc = slot->side == SIDE_LISTEN ? lane_accept(lane, fd) : pending_event(lane, fd, ev);
        if (rc < 0)
            *culprit = (PyObject *)lane;
        else
            Py_DECREF(lane);
        return rc < 0 ? -1 : PUMPED;
    }
    return TO_TWISTED;
}

/*
 * Wait and forward, as often as needed, until an event is left for Twisted,
 * a pump ran Python code (it may have scheduled a call or a write), or the
 * timeout (Twisted's next timed call) is reached.  A busy relay thus costs
 * Twisted's loop nothing: no runUntilCurrent, no Python per wake-up.
 */
static PyObject *
speedups_poll(PyObject *module, PyObject *args)
{
    int epfd, timeout, maxevents;
    if (!PyArg_ParseTuple(args, "iii", &epfd, &timeout, &maxevents))
        return NULL;
    if (maxevents < 1)
        maxevents = 1;
    if (maxevents > events_size) {
        struct epoll_event *grown = PyMem_Realloc(events, sizeof(*events) * (size_t)maxevents);
        if (grown == NULL)
            return PyErr_NoMemory();
        events = grown;
        events_size = maxevents;
    }
    PyObject *result = PyList_New(0);
    if (result == NULL)
        return NULL;
    int64_t deadline = timeout > 0 ? monotonic_ms() + timeout : 0;
    int wait = timeout;
    ran_python = 0;
    for (;;) {
        int count;
        Py_BEGIN_ALLOW_THREADS
        count = epoll_wait(epfd, events, maxevents, wait);
        Py_END_ALLOW_THREADS
        if (count < 0) {
            if (errno != EINTR) {
                Py_DECREF(result);
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            count = 0;
            ran_python = 1; /* a signal: its handler is Python's to run */
        }
        for (int i = 0; i < count; i++) {
            int fd = events[i].data.fd;
            unsigned int ev = events[i].events;
            PyObject *culprit = NULL;
            int how = dispatch(fd, ev, &culprit);
            if (how == PUMPED)
                continue;
            if (how < 0) {
                /* Like an exception in doRead: reported, and the loop goes on. */
                PyErr_WriteUnraisable(culprit);
                Py_DECREF(culprit);
                ran_python = 1;
                continue;
            }
            if (how == TO_TWISTED_ERROR)
                ev = EPOLLERR;
            PyObject *pair = Py_BuildValue("(iI)", fd, ev);
            if (pair == NULL || PyList_Append(result, pair) < 0) {
                Py_XDECREF(pair);
                Py_DECREF(result);
                return NULL;
            }
            Py_DECREF(pair);
        }
        if (PyErr_CheckSignals() < 0) {
            Py_DECREF(result);
            return NULL;
        }
        if (count == 0 || ran_python || PyList_GET_SIZE(result) > 0 || timeout == 0)
            return result;
        if (timeout > 0) {
            int64_t left = deadline - monotonic_ms();
            if (left <= 0)
                return result;
            wait = left > INT32_MAX ? INT32_MAX : (int)left;
        }
    }
}

static PyMethodDef speedups_methods[] = {
    {"register", speedups_register, METH_VARARGS,
     "register(fd, relay, side): poll() forwards this socket's chunks itself."},
    {"unregister", speedups_unregister, METH_VARARGS,
     "unregister(fd, relay): hand the socket back to Twisted (no-op if not registered)."},
    {"poll", speedups_poll, METH_VARARGS,
     "poll(epfd, timeout_ms, maxevents) -> [(fd, events)] left for Twisted."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pgpool_tw._speedups",
    .m_doc = "The relay's hot path in C (see pgpool_tw/_speedups.c).",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&TrackerType) < 0 || PyType_Ready(&RelayType) < 0 ||
        PyType_Ready(&LaneType) < 0)
        return NULL;
    str_write = PyUnicode_InternFromString("write");
    if (str_write == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&TrackerType);
    if (PyModule_AddObject(module, "SessionTracker", (PyObject *)&TrackerType) < 0)
        goto fail;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(module, "Relay", (PyObject *)&RelayType) < 0)
        goto fail;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(module, "Lane", (PyObject *)&LaneType) < 0)
        goto fail;
    const struct {
        const char *name;
        long value;
    } constants[] = {
        {"RECV_SIZE", RECV_SIZE},     {"EV_ENDED", EV_ENDED},       {"EV_RESET", EV_RESET},
        {"EV_PROMOTE", EV_PROMOTE},   {"EV_LEFT", EV_LEFT},         {"EV_LISTENER", EV_LISTENER},
        {"W_PARKED", W_PARKED},       {"W_ACTIVE", W_ACTIVE},       {"W_RESETTING", W_RESETTING},
        {"W_RETURNED", W_RETURNED},
    };
    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++)
        if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0)
            goto fail;
    return module;
fail:
    Py_DECREF(module);
    return NULL;
}
