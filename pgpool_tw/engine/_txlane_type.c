/*
 * pgpool_tw._speedups: the Python types of transaction pooling's lane (TxServer,
 * TxClient, TxLane); what they do on the C loop is _txlane.c.
 */
#include "_speedups.h"
/* ------------------------------------------------------------------------- */
/* TxServer                                                                   */
/* ------------------------------------------------------------------------- */

static int
txserver_init(TxServer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"backend", "transport", "fd", "tag", NULL};
    PyObject *backend, *transport;
    int fd;
    long tag;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOil", kwlist, &backend, &transport, &fd, &tag))
        return -1;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "bad fd");
        return -1;
    }
    PyObject *fd_obj = PyLong_FromLong(fd);
    if (fd_obj == NULL)
        return -1;
    Py_INCREF(backend);
    Py_XSETREF(self->backend, backend);
    Py_INCREF(transport);
    Py_XSETREF(self->transport, transport);
    Py_XSETREF(self->fd_obj, fd_obj);
    self->fd = fd;
    self->tag = tag;
    return 0;
}

static int
txserver_traverse(TxServer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->backend);
    Py_VISIT(self->transport);
    return 0;
}

static int
txserver_clear(TxServer *self)
{
    Py_CLEAR(self->backend);
    Py_CLEAR(self->transport);
    Py_CLEAR(self->fd_obj);
    return 0;
}

static void
txserver_dealloc(TxServer *self)
{
    PyObject_GC_UnTrack(self);
    txserver_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
txserver_get_backend(TxServer *self, void *closure)
{
    PyObject *b = self->backend ? self->backend : Py_None;
    Py_INCREF(b);
    return b;
}

static PyObject *
txserver_get_tag(TxServer *self, void *closure)
{
    return PyLong_FromLong(self->tag);
}

static PyObject *
txserver_get_busy(TxServer *self, void *closure)
{
    return PyBool_FromLong(self->client != NULL);
}

static PyObject *
txserver_retire(TxServer *self, PyObject *unused)
{
    self->retired = 1;
    Py_RETURN_NONE;
}

static PyMethodDef txserver_methods[] = {
    {"retire", (PyCFunction)txserver_retire, METH_NOARGS,
     "When freed, the server goes back to Python (EV_TX_RETIRED) instead of serving again."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef txserver_getset[] = {
    {"backend", (getter)txserver_get_backend, NULL, "Python's server connection.", NULL},
    {"tag", (getter)txserver_get_tag, NULL, "The tag of its session's settings.", NULL},
    {"busy", (getter)txserver_get_busy, NULL, "It serves a transaction here now.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject TxServerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.TxServer",
    .tp_doc = "TxServer(backend, transport, fd, tag): a server connection a TxLane may lend.",
    .tp_basicsize = sizeof(TxServer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)txserver_init,
    .tp_dealloc = (destructor)txserver_dealloc,
    .tp_traverse = (traverseproc)txserver_traverse,
    .tp_clear = (inquiry)txserver_clear,
    .tp_getset = txserver_getset,
    .tp_methods = txserver_methods,
};

/* ------------------------------------------------------------------------- */
/* TxClient                                                                   */
/* ------------------------------------------------------------------------- */

static int
txclient_init(TxClient *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"lane", "transport", "fd", "on_data", "on_adopt", "owner", NULL};
    PyObject *lane, *transport, *on_data, *on_adopt, *owner;
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OiOOO", kwlist, &TxLaneType, &lane,
                                     &transport, &fd, &on_data, &on_adopt, &owner))
        return -1;
    if (fd < 0 || self->lane != NULL) {
        PyErr_SetString(PyExc_ValueError, "bad fd, or the client was set up already");
        return -1;
    }
    self->fd_obj = PyLong_FromLong(fd);
    if (self->fd_obj == NULL)
        return -1;
    Py_INCREF(lane);
    self->lane = (TxLane *)lane;
    Py_INCREF(transport);
    self->transport = transport;
    Py_INCREF(on_data);
    self->on_data = on_data;
    Py_INCREF(on_adopt);
    self->on_adopt = on_adopt;
    Py_INCREF(owner);
    self->owner = owner;
    self->fd = fd;
    self->tag = -1;
    if (tx_register(fd, (PyObject *)self, SIDE_TX_CLIENT) < 0)
        return -1;
    return 0;
}

static int
txclient_traverse(TxClient *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lane);
    Py_VISIT(self->transport);
    Py_VISIT(self->on_data);
    Py_VISIT(self->on_adopt);
    Py_VISIT(self->owner);
    Py_VISIT(self->server);
    return 0;
}

static int
txclient_clear(TxClient *self)
{
    Py_CLEAR(self->transport);
    Py_CLEAR(self->fd_obj);
    Py_CLEAR(self->on_data);
    Py_CLEAR(self->on_adopt);
    Py_CLEAR(self->owner);
    if (self->server != NULL) {
        self->server->client = NULL;
        Py_CLEAR(self->server);
    }
    Py_CLEAR(self->lane);
    return 0;
}

static void
txclient_dealloc(TxClient *self)
{
    PyObject_GC_UnTrack(self);
    txclient_clear(self);
    PyMem_Free(self->pend);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
txclient_arm(TxClient *self, PyObject *arg)
{
    long tag = PyLong_AsLong(arg);
    if (tag == -1 && PyErr_Occurred())
        return NULL;
    if (self->lane == NULL || self->fd < 0 || self->server != NULL || self->queued) {
        PyErr_SetString(PyExc_ValueError, "the client is not idle here");
        return NULL;
    }
    self->tag = tag;
    self->armed = tag >= 0;
    Py_RETURN_NONE;
}

static PyObject *
txclient_disarm(TxClient *self, PyObject *unused)
{
    self->armed = 0;
    Py_RETURN_NONE;
}

/* hold(server): a pinned client's own server, kept here between its transactions. */
static PyObject *
txclient_hold(TxClient *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &TxServerType)) {
        PyErr_SetString(PyExc_TypeError, "hold(server): a TxServer");
        return NULL;
    }
    TxServer *s = (TxServer *)arg;
    if (self->lane == NULL || self->fd < 0 || self->server != NULL || self->queued ||
        s->lane != NULL) {
        PyErr_SetString(PyExc_ValueError, "the client is not idle here, or the server is lent");
        return NULL;
    }
    if (tx_register(s->fd, (PyObject *)s, SIDE_TX_SERVER) < 0)
        return NULL;
    Py_INCREF(s);
    self->server = s;
    s->client = self;
    s->lane = self->lane;
    self->lane->busy++; /* as a transaction here: adopt counts it off */
    self->owed = 0;
    self->status = IDLE;
    self->held = 1;
    self->armed = 1;
    self->skip = 0;
    Py_RETURN_NONE;
}

/* The session ends (or stops using the lane): what runs here is adopted first. */
static PyObject *
txclient_forget(TxClient *self, PyObject *unused)
{
    if (self->queued && self->lane != NULL) {
        tx_queue_remove(self->lane, self);
        self->pend_len = 0;
        Py_DECREF(self);
    }
    self->armed = 0;
    if (self->server != NULL && tx_adopt(self, self->skip, NULL, 0) < 0)
        return NULL;
    tx_unregister(self->fd, (PyObject *)self);
    self->fd = -1;
    Py_RETURN_NONE;
}

static PyObject *
txlane_take_waited(TxLane *self, PyObject *unused)
{
    PyObject *result = PyFloat_FromDouble(self->waited);
    self->waited = 0.0;
    return result;
}

static PyObject *
txlane_take_times(TxLane *self, PyObject *unused)
{
    return take_hist(&self->query_time, self->query_hist);
}

static PyObject *
txlane_take_waits(TxLane *self, PyObject *unused)
{
    double unused_seconds = 0.0; /* the sum is take_waited's */
    return take_hist(&unused_seconds, self->wait_hist);
}

static PyObject *
txlane_take_counts(TxLane *self, PyObject *unused)
{
    PyObject *result = Py_BuildValue("(LLLL)", self->queries, self->xacts, self->bytes_in,
                                     self->bytes_out);
    self->queries = self->xacts = self->bytes_in = self->bytes_out = 0;
    return result;
}

static PyObject *
txclient_get_server(TxClient *self, void *closure)
{
    PyObject *s = self->server ? (PyObject *)self->server : Py_None;
    Py_INCREF(s);
    return s;
}

static PyObject *
txclient_get_armed(TxClient *self, void *closure)
{
    return PyBool_FromLong(self->armed);
}

static PyObject *
txclient_get_waiting(TxClient *self, void *closure)
{
    return PyBool_FromLong(self->queued);
}

/* Read by session/cancel.py only: whether a statement runs here, and which one. */
static PyObject *
txclient_get_owed(TxClient *self, void *closure)
{
    return PyBool_FromLong(self->server != NULL && self->owed);
}

static PyObject *
txclient_get_sent_at(TxClient *self, void *closure)
{
    return PyFloat_FromDouble(self->sent_at);
}

static PyObject *
txclient_get_received(TxClient *self, void *closure)
{
    return PyLong_FromLong(self->received);
}

static PyObject *
txclient_get_bytes(TxClient *self, void *closure)
{
    return PyLong_FromLongLong(closure != NULL ? self->bytes_out : self->bytes_in);
}

static PyObject *
txclient_get_owner(TxClient *self, void *closure)
{
    PyObject *o = self->owner ? self->owner : Py_None;
    Py_INCREF(o);
    return o;
}

static PyGetSetDef txclient_getset[] = {
    {"server", (getter)txclient_get_server, NULL,
     "The TxServer of the transaction running here, or None.", NULL},
    {"owed", (getter)txclient_get_owed, NULL,
     "A statement sent here has not answered yet (else: idle, or a block between "
     "statements).", NULL},
    {"sent_at", (getter)txclient_get_sent_at, NULL,
     "When the statement running here (or the last one) was sent.", NULL},
    {"armed", (getter)txclient_get_armed, NULL, "Its next chunk may be served here.", NULL},
    {"waiting", (getter)txclient_get_waiting, NULL, "It waits here for a server.", NULL},
    {"received", (getter)txclient_get_received, NULL, "Chunks received here.", NULL},
    {"bytes_in", (getter)txclient_get_bytes, NULL, "Client bytes sent on from here.", NULL},
    {"bytes_out", (getter)txclient_get_bytes, NULL, "Server bytes forwarded to it from here.",
     (void *)1},
    {"owner", (getter)txclient_get_owner, NULL, "Python's session.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef txclient_methods[] = {
    {"arm", (PyCFunction)txclient_arm, METH_O,
     "arm(tag): the client is idle and its next chunk may be served here (tag < 0: never)."},
    {"disarm", (PyCFunction)txclient_disarm, METH_NOARGS, "Every chunk is Python's."},
    {"hold", (PyCFunction)txclient_hold, METH_O,
     "hold(server): the pinned client's own server, kept here between its transactions."},
    {"forget", (PyCFunction)txclient_forget, METH_NOARGS,
     "The lane lets the client go: its running transaction adopted, its socket Twisted's."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject TxClientType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.TxClient",
    .tp_doc = "TxClient(lane, transport, fd, on_data, on_adopt, owner): a transaction-mode "
              "client on a TxLane (see _txlane.c).",
    .tp_basicsize = sizeof(TxClient),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)txclient_init,
    .tp_dealloc = (destructor)txclient_dealloc,
    .tp_traverse = (traverseproc)txclient_traverse,
    .tp_clear = (inquiry)txclient_clear,
    .tp_getset = txclient_getset,
    .tp_methods = txclient_methods,
};

/* ------------------------------------------------------------------------- */
/* TxLane                                                                     */
/* ------------------------------------------------------------------------- */

static int
txlane_init(TxLane *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"shapes", "writes", "on_event", NULL};
    PyObject *shapes, *writes, *on_event;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O", kwlist, &PyDict_Type, &shapes,
                                     &PySet_Type, &writes, &on_event))
        return -1;
    Py_INCREF(shapes);
    Py_XSETREF(self->shapes, shapes);
    Py_INCREF(writes);
    Py_XSETREF(self->writes, writes);
    Py_INCREF(on_event);
    Py_XSETREF(self->on_event, on_event);
    return 0;
}

static void
txlane_drop_all(TxLane *self)
{
    while (self->idle_len > 0) {
        TxServer *s = tx_idle_take_at(self, self->idle_len - 1);
        tx_server_leave(s);
        Py_DECREF(s);
    }
    while (self->head != NULL) {
        TxClient *c = self->head;
        tx_queue_remove(self, c);
        c->armed = 0;
        Py_DECREF(c);
    }
}

static int
txlane_traverse(TxLane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->shapes);
    Py_VISIT(self->writes);
    Py_VISIT(self->on_event);
    for (Py_ssize_t i = 0; i < self->idle_len; i++)
        Py_VISIT(self->idle[i]);
    for (TxClient *c = self->head; c != NULL; c = c->next)
        Py_VISIT(c);
    return 0;
}

static int
txlane_clear(TxLane *self)
{
    txlane_drop_all(self);
    Py_CLEAR(self->shapes);
    Py_CLEAR(self->writes);
    Py_CLEAR(self->on_event);
    return 0;
}

static void
txlane_dealloc(TxLane *self)
{
    PyObject_GC_UnTrack(self);
    txlane_clear(self);
    PyMem_Free(self->idle);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
txlane_give(TxLane *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &TxServerType)) {
        PyErr_SetString(PyExc_TypeError, "give(server): a TxServer");
        return NULL;
    }
    TxServer *s = (TxServer *)arg;
    if (s->lane != NULL) {
        PyErr_SetString(PyExc_ValueError, "the server is in a lane already");
        return NULL;
    }
    Py_INCREF(s);
    int rc = tx_lane_give(self, s);
    Py_DECREF(s);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* take(): the most recently parked server, out of the lane; None when none is. */
static PyObject *
txlane_take(TxLane *self, PyObject *unused)
{
    if (self->idle_len == 0)
        Py_RETURN_NONE;
    TxServer *s = tx_idle_take_at(self, self->idle_len - 1);
    tx_server_leave(s);
    return (PyObject *)s;
}

/* remove(server): a parked server out of the lane; False when it is not parked here. */
static PyObject *
txlane_remove(TxLane *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &TxServerType))
        Py_RETURN_FALSE;
    Py_ssize_t i = tx_idle_find(self, (TxServer *)arg);
    if (i < 0)
        Py_RETURN_FALSE;
    TxServer *s = tx_idle_take_at(self, i);
    tx_server_leave(s);
    Py_DECREF(s);
    Py_RETURN_TRUE;
}

/* idle(): [(server, seconds parked)], least recently parked first. */
static PyObject *
txlane_idle(TxLane *self, PyObject *unused)
{
    double now = monotonic_s();
    PyObject *list = PyList_New(self->idle_len);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->idle_len; i++) {
        TxServer *s = self->idle[i];
        PyObject *pair = Py_BuildValue("(Od)", (PyObject *)s, now - s->parked_at);
        if (pair == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    return list;
}

/* expire(seconds): the waiting clients that waited that long, out of the queue. */
static PyObject *
txlane_expire(TxLane *self, PyObject *arg)
{
    double limit = PyFloat_AsDouble(arg);
    if (limit == -1.0 && PyErr_Occurred())
        return NULL;
    double now = monotonic_s();
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    while (self->head != NULL && now - self->head->queued_at >= limit) {
        TxClient *c = self->head;
        tx_queue_remove(self, c);
        c->armed = 0;
        c->pend_len = 0;
        int rc = PyList_Append(out, (PyObject *)c);
        Py_DECREF(c);
        if (rc < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* kick(): the first waiting client goes to Python with what it sent (a server it may
   use sits in Python's pool); False when none waits. */
static PyObject *
txlane_kick(TxLane *self, PyObject *unused)
{
    TxClient *c = self->head;
    if (c == NULL)
        Py_RETURN_FALSE;
    tx_queue_remove(self, c);
    int rc = tx_client_miss_kept(c);
    Py_DECREF(c);
    if (rc < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *
txlane_arrive(TxLane *self, PyObject *unused)
{
    return PyLong_FromLongLong(++self->seq);
}

static PyObject *
txlane_close(TxLane *self, PyObject *unused)
{
    txlane_drop_all(self);
    Py_RETURN_NONE;
}

static PyObject *
txlane_get_idle_count(TxLane *self, void *closure)
{
    return PyLong_FromSsize_t(self->idle_len);
}

static PyObject *
txlane_get_waiting(TxLane *self, void *closure)
{
    return PyLong_FromLong(self->waiting);
}

static PyObject *
txlane_get_busy(TxLane *self, void *closure)
{
    return PyLong_FromLong(self->busy);
}

static PyObject *
txlane_get_max_wait(TxLane *self, void *closure)
{
    return PyFloat_FromDouble(self->head ? monotonic_s() - self->head->queued_at : 0.0);
}

static PyObject *
txlane_get_counts(TxLane *self, void *closure)
{
    return Py_BuildValue("(LLL)", self->hits, self->misses, self->adopted);
}

static PyObject *
txlane_get_py_first(TxLane *self, void *closure)
{
    return PyLong_FromLongLong(self->py_first);
}

static int
txlane_set_py_first(TxLane *self, PyObject *value, void *closure)
{
    long long v = value ? PyLong_AsLongLong(value) : 0;
    if (v == -1 && PyErr_Occurred())
        return -1;
    self->py_first = v;
    return 0;
}

static PyObject *
txlane_get_room(TxLane *self, void *closure)
{
    return PyBool_FromLong(self->room);
}

static int
txlane_set_room(TxLane *self, PyObject *value, void *closure)
{
    int v = value ? PyObject_IsTrue(value) : 0;
    if (v < 0)
        return -1;
    self->room = v;
    return 0;
}

static PyGetSetDef txlane_getset[] = {
    {"idle_count", (getter)txlane_get_idle_count, NULL, "Servers parked here.", NULL},
    {"waiting", (getter)txlane_get_waiting, NULL, "Clients waiting here.", NULL},
    {"busy", (getter)txlane_get_busy, NULL, "Transactions running here.", NULL},
    {"max_wait", (getter)txlane_get_max_wait, NULL,
     "Seconds the first waiting client has waited.", NULL},
    {"counts", (getter)txlane_get_counts, NULL,
     "(statements sent here, chunks handed to Python, transactions adopted).", NULL},
    {"py_first", (getter)txlane_get_py_first, (setter)txlane_set_py_first,
     "The arrival number of Python's first waiting client; 0: none waits.", NULL},
    {"room", (getter)txlane_get_room, (setter)txlane_set_room,
     "Python may open another server or has one parked: a client never waits here.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef txlane_methods[] = {
    {"give", (PyCFunction)txlane_give, METH_O,
     "give(server): a free server to the first waiter (Python's or here) or the stack."},
    {"take", (PyCFunction)txlane_take, METH_NOARGS,
     "The most recently parked server, out of the lane (Twisted's again), or None."},
    {"remove", (PyCFunction)txlane_remove, METH_O,
     "remove(server): a parked server out of the lane; False if it is not parked here."},
    {"idle", (PyCFunction)txlane_idle, METH_NOARGS,
     "[(server, seconds parked)], least recently parked first."},
    {"expire", (PyCFunction)txlane_expire, METH_O,
     "expire(seconds): the waiting clients that waited that long, out of the queue."},
    {"kick", (PyCFunction)txlane_kick, METH_NOARGS,
     "The first waiting client goes to Python (on_data); False when none waits."},
    {"arrive", (PyCFunction)txlane_arrive, METH_NOARGS,
     "The next arrival number (a client that starts waiting in Python)."},
    {"take_counts", (PyCFunction)txlane_take_counts, METH_NOARGS,
     "(queries, xacts, bytes_in, bytes_out) of the transactions run here, then zero."},
    {"take_waited", (PyCFunction)txlane_take_waited, METH_NOARGS,
     "Seconds the clients this lane served from its queue waited, then zero."},
    {"take_times", (PyCFunction)txlane_take_times, METH_NOARGS,
     "(seconds of the statements run here, their counts by log2 bucket of microseconds); "
     "zeroes them."},
    {"take_waits", (PyCFunction)txlane_take_waits, METH_NOARGS,
     "(0.0, the waits of take_waited by log2 bucket of microseconds); zeroes them."},
    {"close", (PyCFunction)txlane_close, METH_NOARGS,
     "Let every parked server and waiting client go (Twisted's again)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject TxLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.TxLane",
    .tp_doc = "TxLane(shapes, writes, on_event): one pool key's transaction-mode servers "
              "on the C loop (see _txlane.c).",
    .tp_basicsize = sizeof(TxLane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)txlane_init,
    .tp_dealloc = (destructor)txlane_dealloc,
    .tp_traverse = (traverseproc)txlane_traverse,
    .tp_clear = (inquiry)txlane_clear,
    .tp_getset = txlane_getset,
    .tp_methods = txlane_methods,
};

