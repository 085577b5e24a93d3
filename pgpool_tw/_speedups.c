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
 * Rules: no allocation per chunk on the common path; Python is called only for
 * a Terminate (the relay's on_terminate), a ParameterStatus (the params dict)
 * and a short send (transport.write).  Only the reactor's thread calls in here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

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

typedef struct {
    PyObject_HEAD
    Tracker *tracker;
    PyObject *transports[2]; /* [0] the client's, [1] the server's */
    PyObject *fd_objs[2];    /* the fds as ints, to look up in `writes` */
    PyObject *writes;        /* the epoll reactor's set of fds it waits to write to */
    int fds[2];
    PyObject *on_terminate;
    long received; /* client chunks forwarded here (client_idle_limit reads it) */
} Relay;

static PyTypeObject RelayType;

static int
relay_init(Relay *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tracker", "client", "server", "client_fd", "server_fd",
                             "on_terminate", "writes", NULL};
    PyObject *tracker, *client, *server, *on_terminate, *writes;
    int client_fd, server_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOiiOO!", kwlist, &TrackerType, &tracker,
                                     &client, &server, &client_fd, &server_fd, &on_terminate,
                                     &PySet_Type, &writes))
        return -1;
    if (client_fd < 0 || server_fd < 0) {
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
    return 0;
}

static void
relay_dealloc(Relay *self)
{
    PyObject_GC_UnTrack(self);
    relay_clear(self);
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

static PyGetSetDef relay_getset[] = {
    {"received", (getter)relay_get_received, NULL,
     "Client chunks forwarded by the C loop.", NULL},
    {"fds", (getter)relay_get_fds, NULL, "(client fd, server fd)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
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
};

/* fd -> (relay, side) for every registered socket. */
typedef struct {
    Relay *relay;
    int side; /* 0: the client's socket, 1: the server's */
} Slot;

static Slot *slots = NULL;
static int slots_size = 0;
static struct epoll_event *events = NULL;
static int events_size = 0;
static unsigned char recv_buffer[RECV_SIZE];
/* Set when a pump ran Python code, which may have scheduled work for Twisted. */
static int ran_python = 0;

static PyObject *str_write;

static PyObject *
speedups_register(PyObject *module, PyObject *args)
{
    int fd, side;
    PyObject *relay;
    if (!PyArg_ParseTuple(args, "iO!i", &fd, &RelayType, &relay, &side))
        return NULL;
    if (fd < 0 || (side != 0 && side != 1)) {
        PyErr_SetString(PyExc_ValueError, "bad fd or side");
        return NULL;
    }
    if (((Relay *)relay)->tracker == NULL) {
        PyErr_SetString(PyExc_ValueError, "the relay was never initialised");
        return NULL;
    }
    if (fd >= slots_size) {
        int size = slots_size ? slots_size : 1024;
        while (size <= fd)
            size *= 2;
        Slot *grown = PyMem_Realloc(slots, sizeof(Slot) * (size_t)size);
        if (grown == NULL)
            return PyErr_NoMemory();
        memset(grown + slots_size, 0, sizeof(Slot) * (size_t)(size - slots_size));
        slots = grown;
        slots_size = size;
    }
    Py_INCREF(relay);
    Relay *old = slots[fd].relay;
    slots[fd].relay = (Relay *)relay;
    slots[fd].side = side;
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyObject *
speedups_unregister(PyObject *module, PyObject *args)
{
    int fd;
    PyObject *relay;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &RelayType, &relay))
        return NULL;
    if (fd >= 0 && fd < slots_size && slots[fd].relay == (Relay *)relay) {
        slots[fd].relay = NULL;
        Py_DECREF(relay);
    }
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

/* One readable event of a registered socket.  -1 on a Python error. */
static int
pump(Relay *r, int side)
{
    int peer = 1 - side;
    int clear = clear_to_send(r, peer);
    if (clear <= 0)
        return clear < 0 ? -1 : TO_TWISTED;
    ssize_t n = recv(r->fds[side], recv_buffer, RECV_SIZE, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return PUMPED;
        return TO_TWISTED_ERROR;
    }
    if (n == 0)
        return TO_TWISTED; /* end of file: Twisted's read sees it again */
    if (side == 0) {
        r->received++;
        Py_ssize_t at = feed_client_raw(r->tracker, recv_buffer, n);
        if (send_now(r->fds[1], r->transports[1], recv_buffer, at < 0 ? n : at) < 0)
            return -1;
        if (at >= 0) {
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

static int64_t
monotonic_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
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
            if (ev == EPOLLIN && fd >= 0 && fd < slots_size && slots[fd].relay != NULL) {
                Relay *relay = slots[fd].relay;
                int side = slots[fd].side;
                Py_INCREF(relay); /* Python called from pump() may unregister it */
                int how = pump(relay, side);
                Py_DECREF(relay);
                if (how == PUMPED)
                    continue;
                if (how < 0) {
                    /* Like an exception in doRead: reported, and the loop goes on. */
                    PyErr_WriteUnraisable((PyObject *)relay);
                    ran_python = 1;
                    continue;
                }
                if (how == TO_TWISTED_ERROR)
                    ev = EPOLLERR;
            }
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
    if (PyType_Ready(&TrackerType) < 0 || PyType_Ready(&RelayType) < 0)
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
    if (PyModule_AddIntConstant(module, "RECV_SIZE", RECV_SIZE) < 0)
        goto fail;
    return module;
fail:
    Py_DECREF(module);
    return NULL;
}
