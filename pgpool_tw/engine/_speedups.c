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
 * - SessionTracker (_tracker.c): the same object as pgpool_tw.protocol.relay.SessionTracker
 *   (same attributes, same rules, the same results for any cutting of the same
 *   bytes; tests/unit/test_speedups.py runs the Python tracker's tests on it and
 *   compares both on random streams).  It does no I/O.
 *
 * - Relay, register(), unregister(), poll() (this file): an epoll iteration that forwards the
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
 * - Lane (_lane.c, _warm.c): warm logins.  A client that connects once per transaction and
 *   sends a startup packet Python has logged in before is accepted, logged in on a
 *   pooled server Python lent (_lane.c), relayed, and its server reset and parked
 *   again (_warm.c), all in C; every other case goes back to Python (see
 *   pgpool_tw/engine/warm.py).  _speedups.h holds what the four files share.
 *
 * Rules: no allocation per chunk on the common path; Python is called only for
 * a Terminate (the relay's on_terminate), a ParameterStatus (the params dict),
 * a short send (transport.write) and a warm session that leaves the common case.
 * Only the reactor's thread calls in here.
 */
#include "_speedups.h"

/* ------------------------------------------------------------------------- */
/* Relay and the epoll iteration                                              */
/* ------------------------------------------------------------------------- */


/* A warm relay's life (see the Lane section below). */



double
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
                             "reset_count", "uses_left", "pid",     "secret_at", NULL};
    PyObject *tracker, *client, *server, *on_terminate, *writes;
    PyObject *lane = NULL, *stack = NULL, *connection = NULL, *reply = NULL, *reset = NULL;
    int client_fd, server_fd, reset_count = 0;
    long uses_left = -1;
    unsigned long pid = 0;
    Py_ssize_t secret_at = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOiiOO!|O!O!OSSilkn", kwlist, &TrackerType,
                                     &tracker, &client, &server, &client_fd, &server_fd,
                                     &on_terminate, &PySet_Type, &writes, &LaneType, &lane,
                                     &PyList_Type, &stack, &connection, &reply, &reset,
                                     &reset_count, &uses_left, &pid, &secret_at))
        return -1;
    if (lane != NULL) {
        if (client_fd != -1 || server_fd < 0 || stack == NULL || connection == NULL ||
            reply == NULL || reset == NULL || reset_count < 0 || secret_at < 0 ||
            secret_at > PyBytes_GET_SIZE(reply) - 4) {
            PyErr_SetString(PyExc_ValueError,
                            "a warm relay needs a server socket, a stack, the connection, "
                            "its login's end with the secret's offset in it, its reset, "
                            "and no client yet");
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
    if (reply != NULL) {
        Py_ssize_t n = PyBytes_GET_SIZE(reply);
        unsigned char *login = PyMem_Malloc(n > 0 ? (size_t)n : 1);
        if (login == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(login, PyBytes_AS_STRING(reply), (size_t)n);
        PyMem_Free(self->login);
        self->login = login;
        self->login_len = n;
        self->secret_at = secret_at;
    }
    Py_XINCREF(reset);
    Py_XSETREF(self->reset, reset);
    self->reset_count = reset_count;
    self->uses_left = uses_left;
    self->uses = 0;
    self->wstate = W_PARKED;
    self->pid = (uint32_t)pid;
    self->secret = 0;
    self->parked_at = monotonic_s();
    reset_start(&self->answer, 0);
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
    Py_CLEAR(self->reset);
    return 0;
}

static void
relay_dealloc(Relay *self)
{
    PyObject_GC_UnTrack(self);
    relay_clear(self);
    PyMem_Free(self->answer.buf);
    PyMem_Free(self->login);
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

PyObject *
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


static PyMethodDef relay_methods[] = {
    {"promote", (PyCFunction)relay_promote, METH_NOARGS,
     "Hand an active warm session's client socket to Python (on_event PROMOTE)."},
    {"drop", (PyCFunction)relay_drop, METH_O,
     "drop(last_words): Python takes the server back; an active session's client gets "
     "the last words and is closed."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.Relay",
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



/* A client a lane accepted, until its startup packet is read. */


Slot *slots = NULL;
int slots_size = 0;
static struct epoll_event *events = NULL;
static int events_size = 0;
unsigned char recv_buffer[RECV_SIZE];
/* Set when a pump ran Python code, which may have scheduled work for Twisted. */
int ran_python = 0;

static PyObject *str_write;

int
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
void
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

int
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
void
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
int
clear_to_send(Relay *r, int peer)
{
    int busy = PySet_Contains(r->writes, r->fd_objs[peer]);
    return busy < 0 ? -1 : !busy;
}

/* Send now; what the kernel does not take goes to Twisted's write(). */
int
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



/* recv into recv_buffer: the byte count, 0 at end of file, -1 on an error, AGAIN. */
ssize_t
recv_chunk(int fd)
{
    ssize_t n = recv(fd, recv_buffer, RECV_SIZE, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return AGAIN;
    return n;
}

/* A client chunk in recv_buffer, sent on up to a Terminate: 1 when it held one. */
int
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
 * Which of a batch's events a pass handles.  The first pass forwards what clients
 * sent, so their servers start working at once; the second does everything else,
 * so the answers to many clients leave together.  A client program that
 * multiplexes connections (pgbench's threads, an application's pool) then wakes
 * once for several answers instead of once each: in S5 pgbench's CPU per
 * transaction fell from 7.9-9.7 to 5.9-6.7 us (bench/RESULTS.md).  epoll's
 * order within a batch means nothing, so this changes no outcome, only when
 * the bytes move.
 */
#define DONE (-1) /* an event a pass already handled */

static int
due_in_pass(int fd, int first)
{
    if (fd == DONE)
        return 0;
    if (!first)
        return 1;
    return fd >= 0 && fd < slots_size && slots[fd].relay != NULL && slots[fd].side == SIDE_CLIENT;
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
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < count; i++) {
                struct epoll_event *event = &events[i];
                int fd = event->data.fd;
                if (!due_in_pass(fd, pass == 0))
                    continue;
                event->data.fd = DONE;
                unsigned int ev = event->events;
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
    .m_name = "pgpool_tw.engine._speedups",
    .m_doc = "The relay's hot path in C (see pgpool_tw/engine/_speedups.c).",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&TrackerType) < 0 || PyType_Ready(&RelayType) < 0 ||
        PyType_Ready(&LaneType) < 0 || PyType_Ready(&ResetReplyType) < 0)
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
    Py_INCREF(&ResetReplyType);
    if (PyModule_AddObject(module, "ResetReply", (PyObject *)&ResetReplyType) < 0)
        goto fail;
    const struct {
        const char *name;
        long value;
    } constants[] = {
        {"RECV_SIZE", RECV_SIZE},     {"EV_ENDED", EV_ENDED},       {"EV_RESET", EV_RESET},
        {"EV_PROMOTE", EV_PROMOTE},   {"EV_LEFT", EV_LEFT},         {"EV_LISTENER", EV_LISTENER},
        {"W_PARKED", W_PARKED},       {"W_ACTIVE", W_ACTIVE},       {"W_RESETTING", W_RESETTING},
        {"W_RETURNED", W_RETURNED},   {"NOTE_STARTED", NOTE_STARTED}, {"NOTE_ENDED", NOTE_ENDED},
    };
    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++)
        if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0)
            goto fail;
    return module;
fail:
    Py_DECREF(module);
    return NULL;
}
