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
 * - SessionTracker (_tracker.c walks, _tracker_type.c is the type): the same object as pgpool_tw.protocol.relay.SessionTracker
 *   (same attributes, same rules, the same results for any cutting of the same
 *   bytes; tests/unit/test_speedups.py runs the Python tracker's tests on it and
 *   compares both on random streams).  It does no I/O.
 *
 * - poll() (this file), Relay (_relay.c), register() and unregister() (_slots.c, the
 *   table of what each fd is): an epoll iteration that forwards the chunks of
 *   registered relay sockets itself: recv into one buffer, walk the
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
 * - Lane (_lane.c, _login.c, _warm.c, _reset.c): warm logins.  A client that
 *   connects once per transaction and sends a startup packet Python has logged
 *   in before is accepted, logged in on a pooled server Python lent (_login.c),
 *   relayed, and its server reset (_reset.c reads the answer, by the rule of
 *   protocol/reset_reply.py) and parked again (_warm.c), all in C; every other
 *   case goes back to Python (see pgpool_tw/lane/warm.py).  Every rule the
 *   lane applies is data Python hands down (docs/ARCHITECTURE.md section 3).
 *   _speedups.h holds what the files share.
 *
 * Rules: no allocation per chunk on the common path; Python is called only for
 * a Terminate or a watched Query (the relay's on_terminate, with the chunk's rest), a ParameterStatus (the params dict),
 * a short send (transport.write) and a warm session that leaves the common case.
 * Only the reactor's thread calls in here.
 */
#include "_speedups.h"


double loop_now = 0.0;
int in_batch = 0;

static struct epoll_event *events = NULL;
static int events_size = 0;

/* Receive a chunk of `fd` into recv_buffer: GOT_CHUNK, or how poll() leaves the event. */
int
take_chunk(int fd, ssize_t *n)
{
    *n = recv_chunk(fd);
    if (*n == AGAIN)
        return PUMPED;
    if (*n < 0)
        return TO_TWISTED_ERROR;
    if (*n == 0)
        return TO_TWISTED; /* end of file: Twisted's read sees it again */
    return GOT_CHUNK;
}

/* One readable event of a registered socket.  -1 on a Python error. */
static int
pump(Relay *r, int side)
{
    int peer = 1 - side;
    int clear = clear_to_send(r, peer);
    if (clear <= 0)
        return clear < 0 ? -1 : TO_TWISTED;
    ssize_t n;
    int got = take_chunk(r->fds[side], &n);
    if (got != GOT_CHUNK)
        return got;
    if (side == 0) {
        Py_ssize_t at = forward_client(r, n);
        if (at == -2)
            return -1;
        if (at >= 0) { /* Python takes the rest: a Terminate's end, or a watched Query */
            ran_python = 1;
            PyObject *res = PyObject_CallFunction(r->on_terminate, "y#",
                                                  (const char *)recv_buffer + at, n - at);
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
    if (slot->router != NULL) {
        Router *router = slot->router;
        Py_INCREF(router); /* Python called from here may unregister it */
        int how = router_event(router, slot->side - SIDE_ROUTED, ev);
        if (how < 0)
            *culprit = (PyObject *)router;
        else
            Py_DECREF(router);
        return how;
    }
    if (slot->tx != NULL) {
        PyObject *tx = slot->tx;
        Py_INCREF(tx); /* Python called from here may unregister it */
        int how = tx_event(tx, slot->side, ev);
        if (how < 0)
            *culprit = tx;
        else
            Py_DECREF(tx);
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
    if (fd < 0 || fd >= slots_size)
        return 0;
    Slot *slot = &slots[fd];
    return (slot->relay != NULL && slot->side == SIDE_CLIENT) ||
           (slot->router != NULL && slot->side == SIDE_ROUTED) ||
           (slot->tx != NULL && slot->side == SIDE_TX_CLIENT);
}

/* One batch of `count` events in two passes; what is Twisted's goes on `result`.  -1: error. */
static int
handle_batch(int count, PyObject *result)
{
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
                return -1;
            }
            Py_DECREF(pair);
        }
    }
    return 0;
}

static int
events_reserve(int maxevents)
{
    if (maxevents <= events_size)
        return 0;
    struct epoll_event *grown = PyMem_Realloc(events, sizeof(*events) * (size_t)maxevents);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    events = grown;
    events_size = maxevents;
    return 0;
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
    if (events_reserve(maxevents) < 0)
        return NULL;
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
        /* One clock read per batch: the time its events are handled at (event_now). */
        loop_now = monotonic_s();
        in_batch = 1;
        int handled = handle_batch(count, result);
        in_batch = 0;
        if (handled < 0 || PyErr_CheckSignals() < 0) {
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

/* The histograms' bucket rule, for the tests that hold it equal to Python's. */
static PyObject *
speedups_log2_bucket(PyObject *module, PyObject *arg)
{
    double seconds = PyFloat_AsDouble(arg);
    if (seconds == -1.0 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(log2_bucket(seconds));
}

static PyMethodDef speedups_methods[] = {
    {"log2_bucket", speedups_log2_bucket, METH_O,
     "log2_bucket(seconds) -> the histogram bucket of a duration (see _speedups.h)."},
    {"register", speedups_register, METH_VARARGS,
     "register(fd, relay, side): poll() forwards this socket's chunks itself."},
    {"unregister", speedups_unregister, METH_VARARGS,
     "unregister(fd, relay): hand the socket back to Twisted (no-op if not registered)."},
    {"register_router", speedups_register_router, METH_VARARGS,
     "register_router(fd, router, side): poll() gives this socket's events to the router."},
    {"poll", speedups_poll, METH_VARARGS,
     "poll(epfd, timeout_ms, maxevents) -> [(fd, events)] left for Twisted."},
    {"shape_key", speedups_shape_key, METH_O,
     "shape_key(data) -> the text's key with literals as placeholders, or None (see _shape.c)."},
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
        PyType_Ready(&LaneType) < 0 || PyType_Ready(&ResetReplyType) < 0 ||
        PyType_Ready(&SendNowType) < 0 || PyType_Ready(&RouterType) < 0 ||
        PyType_Ready(&TxLaneType) < 0 || PyType_Ready(&TxClientType) < 0 ||
        PyType_Ready(&TxServerType) < 0)
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
    Py_INCREF(&SendNowType);
    if (PyModule_AddObject(module, "SendNow", (PyObject *)&SendNowType) < 0)
        goto fail;
    Py_INCREF(&RouterType);
    if (PyModule_AddObject(module, "Router", (PyObject *)&RouterType) < 0)
        goto fail;
    Py_INCREF(&TxLaneType);
    if (PyModule_AddObject(module, "TxLane", (PyObject *)&TxLaneType) < 0)
        goto fail;
    Py_INCREF(&TxClientType);
    if (PyModule_AddObject(module, "TxClient", (PyObject *)&TxClientType) < 0)
        goto fail;
    Py_INCREF(&TxServerType);
    if (PyModule_AddObject(module, "TxServer", (PyObject *)&TxServerType) < 0)
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
        {"EV_TX_RETURN", EV_TX_RETURN}, {"EV_TX_LOST", EV_TX_LOST},
        {"EV_TX_RETIRED", EV_TX_RETIRED},
    };
    for (size_t i = 0; i < sizeof(constants) / sizeof(constants[0]); i++)
        if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0)
            goto fail;
    return module;
fail:
    Py_DECREF(module);
    return NULL;
}
