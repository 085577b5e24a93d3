/*
 * pgpool_tw._speedups: Router, a routed session's sockets on the C loop.
 *
 * A routed session (pgpool_tw/session/routed.py) sends each statement to the primary or
 * to its load-balancing node.  Python decides; this file only looks the decision up.
 * Python keeps two tables here: `shapes`, shared by every session (a query text's shape
 * key, _shape.c, -> the statement's class: a plain read, a plain write, a plain
 * statement for the primary, a COMMIT, a BEGIN), and the session's own `table`: per
 * state and class, the leg such a statement goes to, the ReadyForQuery status its
 * answer must end with, and the state that end leads to.  The states are snapshots of
 * the session's Python state (RoutedStream._automaton); the router only follows them
 * and counts its moves, and Python takes the state it reached whenever it next sees
 * the session.  Python arms the router when its own queue empties and disarms it
 * whenever its state is in motion.

 * While armed, a client chunk that is exactly one Query whose shape is in the table
 * goes to its leg from here, and the leg's answer goes back to the client from here,
 * headers walked, until its ReadyForQuery: no Python at all.  Everything else is
 * Python's: other chunks (on_data), and, when the answer holds anything but
 * RowDescription, DataRow, CommandComplete, NoticeResponse, ErrorResponse,
 * EmptyQueryResponse or the expected ReadyForQuery, or a socket of the session fails,
 * the statement itself: on_adopt(leg, raw_left, class) hands it to the stream, which
 * queues it as if it had sent it from the state the router is in (raw_left: bytes of a
 * message already half forwarded), then the
 * rest of the answer follows through on_data.  What other sockets of the session
 * sent meanwhile is kept and handed over once the answer ended, in order.
 */
#include "_speedups.h"

#define ROUTER_SIDES 3 /* [0] the client, [1] leg 0 (the primary), [2] leg 1 */
#define MESSAGE_MAX 0x3FFFFFFF
#define PENDING_LIMIT (256 * 1024)

static void
router_forget_pending(Router *r)
{
    for (int i = 0; i < ROUTER_SIDES; i++) {
        PyMem_Free(r->pend[i]);
        r->pend[i] = NULL;
        r->pend_len[i] = r->pend_cap[i] = 0;
    }
}

static void
router_disarm(Router *r)
{
    r->states = 0;
}

/* Send to one of the session's sockets: now unless Twisted has bytes queued for it. */
static int
router_send(Router *r, int side, const unsigned char *data, Py_ssize_t n)
{
    if (n <= 0 || r->fds[side] < 0)
        return 0; /* a socket forgotten: its session is ending (Python closes it) */
    int busy = PySet_Contains(r->writes, r->fd_objs[side]);
    if (busy < 0)
        return -1;
    if (busy)
        return send_queued(r->transports[side], data, n);
    return send_now(r->fds[side], r->transports[side], data, n);
}

/* Python's turn: on_data[side](bytes). */
static int
router_call(Router *r, int side, const unsigned char *data, Py_ssize_t n)
{
    PyObject *callback = r->on_data[side];
    if (n <= 0 || callback == NULL || callback == Py_None)
        return 0;
    ran_python = 1;
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)data, n);
    if (chunk == NULL)
        return -1;
    Py_INCREF(callback);
    PyObject *res = PyObject_CallOneArg(callback, chunk);
    Py_DECREF(callback);
    Py_DECREF(chunk);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static int
router_keep(Router *r, int side, const unsigned char *data, Py_ssize_t n)
{
    return buffer_append(&r->pend[side], &r->pend_len[side], &r->pend_cap[side], data, n);
}

/* The class of a chunk that is exactly one Query whose shape Python has classified; 0
   otherwise; -1 on a Python error. */
static int
router_class(Router *r, const unsigned char *data, Py_ssize_t n)
{
    if (n < 6 || data[0] != C_QUERY || length_at(data + 1) + 1 != n || data[n - 1] != 0)
        return 0;
    Py_ssize_t text = n - 6;
    if (text > ROUTE_TEXT_MAX)
        return 0;
    Py_ssize_t len = shape_key_into(data + 5, text, r->key);
    if (len < 0)
        return 0;
    PyObject *key = PyBytes_FromStringAndSize((const char *)r->key, len);
    if (key == NULL)
        return -1;
    PyObject *value = PyDict_GetItemWithError(r->shapes, key); /* borrowed */
    Py_DECREF(key);
    if (value == NULL)
        return PyErr_Occurred() ? -1 : 0;
    long cls = PyLong_AsLong(value);
    if (cls == -1 && PyErr_Occurred())
        return -1;
    return cls > 0 && cls < ROUTE_CLASSES ? (int)cls : 0;
}

static int router_deliver(Router *r, int adopted, int side, const unsigned char *rest,
                          Py_ssize_t rest_len);

/* A client chunk while nothing is owed: routed here when armed for it, else Python's. */
static int
router_client(Router *r, const unsigned char *data, Py_ssize_t n)
{
    int cls = r->states > 0 ? router_class(r, data, n) : 0;
    if (cls < 0)
        return -1;
    const signed char *entry = r->table[r->state][cls];
    int leg = cls > 0 ? entry[0] : -1;
    if (leg < 0 || leg > 1 || r->fds[leg + 1] < 0)
        return router_call(r, 0, data, n); /* which counts it (client_idle_limit) */
    r->received++;
    r->bytes_in += n;
    if (cls == ROUTE_CLASS_READ)
        r->reads[leg]++;
    r->status = entry[1];
    r->next = entry[2];
    r->busy_class = cls;
    r->busy = leg;
    r->skip = 0;
    r->adopt_soon = 0;
    return router_send(r, leg + 1, data, n);
}

/* The stream takes the statement the leg still answers (see the top of this file). */
static int
router_adopt(Router *r, int64_t raw_left)
{
    int leg = r->busy;
    r->busy = -1;
    router_disarm(r);
    if (r->on_adopt == NULL)
        return 0;
    ran_python = 1;
    PyObject *res =
        PyObject_CallFunction(r->on_adopt, "iLi", leg, (long long)raw_left, r->busy_class);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/*
 * After the statement ended (adopted: handed to Python): the rest of the leg's chunk,
 * then what the other leg and the client sent meanwhile.  The client's goes through
 * router_client again when nothing was adopted (it may be the next fast statement).
 */
static int
router_deliver(Router *r, int adopted, int side, const unsigned char *rest, Py_ssize_t rest_len)
{
    unsigned char *kept[ROUTER_SIDES];
    Py_ssize_t kept_len[ROUTER_SIDES];
    for (int i = 0; i < ROUTER_SIDES; i++) {
        kept[i] = r->pend[i];
        kept_len[i] = r->pend_len[i];
        r->pend[i] = NULL;
        r->pend_len[i] = r->pend_cap[i] = 0;
    }
    /* `rest` may be recv_buffer: Python code never reads into it, and it is used first. */
    int rc = router_call(r, side, rest, rest_len);
    for (int i = 1; i < ROUTER_SIDES && rc == 0; i++)
        if (i != side && kept_len[i] > 0)
            rc = router_call(r, i, kept[i], kept_len[i]);
    if (rc == 0 && kept_len[0] > 0) {
        if (adopted || r->busy >= 0 || r->fds[0] < 0)
            rc = router_call(r, 0, kept[0], kept_len[0]);
        else
            rc = router_client(r, kept[0], kept_len[0]);
    }
    for (int i = 0; i < ROUTER_SIDES; i++)
        PyMem_Free(kept[i]);
    return rc;
}

/* Adopt at a message boundary: forward what came before `at`, hand over the rest. */
static int
router_adopt_at(Router *r, int side, const unsigned char *data, Py_ssize_t start, Py_ssize_t at,
                Py_ssize_t n)
{
    r->bytes_out += at - start;
    if (router_send(r, 0, data + start, at - start) < 0)
        return -1;
    if (router_adopt(r, 0) < 0)
        return -1;
    return router_deliver(r, 1, side, data + at, n - at);
}

/* A chunk of the leg that owes the answer: forwarded up to its ReadyForQuery. */
static int
router_reply(Router *r, int side, const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t pos = 0;
    while (pos < n) {
        if (r->skip > 0) {
            int64_t take = r->skip < n - pos ? r->skip : n - pos;
            pos += (Py_ssize_t)take;
            r->skip -= take;
            continue;
        }
        if (r->adopt_soon)
            return router_adopt_at(r, side, data, 0, pos, n);
        unsigned char type = data[pos];
        Py_ssize_t need = type == S_READY ? 6 : 5;
        if (n - pos < need) /* a header cut by the chunk: rare, and Python's */
            return router_adopt_at(r, side, data, 0, pos, n);
        int64_t len = length_at(data + pos + 1);
        if (len < 4 || len > MESSAGE_MAX)
            return router_adopt_at(r, side, data, 0, pos, n);
        switch (type) {
        case 'T': case 'D': case 'C': case 'N': case 'E': case 'I':
            pos += 5;
            r->skip = len - 4;
            break;
        case S_READY: {
            if (len != 5 || data[pos + 5] != r->status)
                return router_adopt_at(r, side, data, 0, pos, n);
            pos += 6;
            r->bytes_out += pos;
            if (router_send(r, 0, data, pos) < 0)
                return -1;
            r->busy = -1;
            r->state = r->next;
            r->moves++;
            r->queries++;
            if (r->status == IDLE)
                r->xacts++;
            return router_deliver(r, 0, side, data + pos, n - pos);
        }
        default:
            return router_adopt_at(r, side, data, 0, pos, n);
        }
    }
    r->bytes_out += n;
    return router_send(r, 0, data, n);
}

/* One event of one of the session's sockets: PUMPED, TO_TWISTED(_ERROR), or -1. */
int
router_event(Router *r, int side, unsigned int ev)
{
    if (side < 0 || side >= ROUTER_SIDES || r->fds[side] < 0)
        return TO_TWISTED;
    if (r->busy < 0) {
        if (ev != EPOLLIN)
            return TO_TWISTED;
        ssize_t n;
        int got = take_chunk(r->fds[side], &n);
        if (got != GOT_CHUNK)
            return got;
        if (side == 0)
            return router_client(r, recv_buffer, n);
        return router_call(r, side, recv_buffer, n);
    }
    /* An answer is owed: no socket of the session goes to Twisted before Python knows. */
    if (!(ev & EPOLLIN)) {
        if (router_adopt(r, r->skip) < 0 || router_deliver(r, 1, 0, NULL, 0) < 0)
            return -1;
        return TO_TWISTED;
    }
    ssize_t n;
    int got = take_chunk(r->fds[side], &n);
    if (got == PUMPED)
        return PUMPED;
    if (got != GOT_CHUNK) { /* end of file, an error: Twisted's, once Python knows */
        if (router_adopt(r, r->skip) < 0 || router_deliver(r, 1, 0, NULL, 0) < 0)
            return -1;
        return got;
    }
    if (side == r->busy + 1)
        return router_reply(r, side, recv_buffer, n);
    if (router_keep(r, side, recv_buffer, n) < 0)
        return -1;
    if (r->pend_len[side] > PENDING_LIMIT)
        r->adopt_soon = 1; /* at the answer's next message boundary */
    return PUMPED;
}

/* ------------------------------------------------------------------------- */
/* The Python type                                                            */
/* ------------------------------------------------------------------------- */

static int
router_init(Router *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fds", "transports", "writes", "shapes", "on_data", "on_adopt", NULL};
    PyObject *fds, *transports, *writes, *shapes, *on_data, *on_adopt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!O!O", kwlist, &PyTuple_Type, &fds,
                                     &PyTuple_Type, &transports, &PySet_Type, &writes,
                                     &PyDict_Type, &shapes, &PyTuple_Type, &on_data, &on_adopt))
        return -1;
    if (PyTuple_GET_SIZE(fds) != ROUTER_SIDES || PyTuple_GET_SIZE(transports) != ROUTER_SIDES ||
        PyTuple_GET_SIZE(on_data) != ROUTER_SIDES) {
        PyErr_SetString(PyExc_ValueError,
                        "a router takes (client, leg 0, leg 1) fds, transports and callbacks");
        return -1;
    }
    for (int i = 0; i < ROUTER_SIDES; i++) {
        long fd = PyLong_AsLong(PyTuple_GET_ITEM(fds, i));
        if (fd == -1 && PyErr_Occurred())
            return -1;
        self->fds[i] = (int)fd;
        PyObject *fd_obj = PyTuple_GET_ITEM(fds, i);
        Py_INCREF(fd_obj);
        Py_XSETREF(self->fd_objs[i], fd_obj);
        PyObject *transport = PyTuple_GET_ITEM(transports, i);
        Py_INCREF(transport);
        Py_XSETREF(self->transports[i], transport);
        PyObject *callback = PyTuple_GET_ITEM(on_data, i);
        Py_INCREF(callback);
        Py_XSETREF(self->on_data[i], callback);
    }
    if (self->fds[0] < 0 || self->fds[1] < 0) {
        PyErr_SetString(PyExc_ValueError, "a router needs the client's and the primary's socket");
        return -1;
    }
    Py_INCREF(writes);
    Py_XSETREF(self->writes, writes);
    Py_INCREF(shapes);
    Py_XSETREF(self->shapes, shapes);
    Py_INCREF(on_adopt);
    Py_XSETREF(self->on_adopt, on_adopt);
    router_disarm(self);
    self->busy = -1;
    return 0;
}

static int
router_traverse(Router *self, visitproc visit, void *arg)
{
    for (int i = 0; i < ROUTER_SIDES; i++) {
        Py_VISIT(self->transports[i]);
        Py_VISIT(self->on_data[i]);
    }
    Py_VISIT(self->writes);
    Py_VISIT(self->shapes);
    Py_VISIT(self->on_adopt);
    return 0;
}

static int
router_clear(Router *self)
{
    for (int i = 0; i < ROUTER_SIDES; i++) {
        Py_CLEAR(self->transports[i]);
        Py_CLEAR(self->fd_objs[i]);
        Py_CLEAR(self->on_data[i]);
    }
    Py_CLEAR(self->writes);
    Py_CLEAR(self->shapes);
    Py_CLEAR(self->on_adopt);
    return 0;
}

static void
router_dealloc(Router *self)
{
    PyObject_GC_UnTrack(self);
    router_clear(self);
    router_forget_pending(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
router_arm(Router *self, PyObject *args)
{
    const unsigned char *table;
    Py_ssize_t len;
    int states;
    if (!PyArg_ParseTuple(args, "y#i", &table, &len, &states))
        return NULL;
    if (states < 1 || states > ROUTE_STATES || len != ROUTE_STATES * ROUTE_CLASSES * 3) {
        PyErr_SetString(PyExc_ValueError,
                        "a table of (leg + 1, status, next) bytes per state and class");
        return NULL;
    }
    for (int s = 0; s < ROUTE_STATES; s++)
        for (int c = 0; c < ROUTE_CLASSES; c++) {
            const unsigned char *cell = table + (s * ROUTE_CLASSES + c) * 3;
            signed char *entry = self->table[s][c];
            /* A leg beyond the second, a state out of range, a status that is no
               ASCII letter: Python's. */
            int ok = cell[0] >= 1 && cell[0] <= 2 && cell[2] < states && cell[1] < 128;
            entry[0] = (signed char)(ok ? cell[0] - 1 : -1);
            entry[1] = (signed char)(ok ? cell[1] : 0);
            entry[2] = (signed char)(ok ? cell[2] : 0);
        }
    self->states = states;
    self->state = 0;
    Py_RETURN_NONE;
}

static PyObject *
router_disarm_py(Router *self, PyObject *unused)
{
    router_disarm(self);
    Py_RETURN_NONE;
}

/* Forget a socket (a leg let go, or the session's end): it is never read or written here. */
static PyObject *
router_forget(Router *self, PyObject *arg)
{
    long side = PyLong_AsLong(arg);
    if (side == -1 && PyErr_Occurred())
        return NULL;
    if (side < 0 || side >= ROUTER_SIDES) {
        PyErr_SetString(PyExc_ValueError, "side 0, 1 or 2");
        return NULL;
    }
    int fd = self->fds[side];
    if (fd >= 0 && fd < slots_size && slots[fd].router == self)
        slot_clear(fd);
    self->fds[side] = -1;
    router_disarm(self);
    Py_RETURN_NONE;
}

static PyObject *
router_take_counts(Router *self, PyObject *unused)
{
    PyObject *result = Py_BuildValue("(LLLLLL)", self->queries, self->xacts, self->bytes_in,
                                     self->bytes_out, self->reads[0], self->reads[1]);
    self->queries = self->xacts = self->bytes_in = self->bytes_out = 0;
    self->reads[0] = self->reads[1] = 0;
    return result;
}

static PyObject *
router_get_busy(Router *self, void *closure)
{
    return PyLong_FromLong(self->busy);
}

static PyObject *
router_get_received(Router *self, void *closure)
{
    return PyLong_FromLong(self->received);
}

static PyObject *
router_get_state(Router *self, void *closure)
{
    return PyLong_FromLong(self->state);
}

static PyObject *
router_get_moves(Router *self, void *closure)
{
    return PyLong_FromLong(self->moves);
}

static PyGetSetDef router_getset[] = {
    {"busy", (getter)router_get_busy, NULL,
     "The leg whose answer the C loop forwards now, or -1.", NULL},
    {"received", (getter)router_get_received, NULL,
     "Client chunks received here (client_idle_limit reads it).", NULL},
    {"state", (getter)router_get_state, NULL,
     "The table's state now (kept when disarmed: the state Python must take).", NULL},
    {"moves", (getter)router_get_moves, NULL,
     "Statements the router saw end (each moved its state).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef router_methods[] = {
    {"arm", (PyCFunction)router_arm, METH_VARARGS,
     "arm(table, states): bytes, per state and class (leg + 1 or 0, status, next state); "
     "the router starts in state 0."},
    {"disarm", (PyCFunction)router_disarm_py, METH_NOARGS, "Every statement is Python's."},
    {"forget", (PyCFunction)router_forget, METH_O,
     "forget(side): side 0 (client), 1 or 2 (legs) is no longer this router's."},
    {"take_counts", (PyCFunction)router_take_counts, METH_NOARGS,
     "(queries, xacts, bytes_in, bytes_out, reads on leg 0, reads on leg 1), then zero."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RouterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.Router",
    .tp_doc = "Router(fds, transports, writes, shapes, on_data, on_adopt): a routed "
              "session's sockets on the C loop (see _route.c).",
    .tp_basicsize = sizeof(Router),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)router_init,
    .tp_dealloc = (destructor)router_dealloc,
    .tp_traverse = (traverseproc)router_traverse,
    .tp_clear = (inquiry)router_clear,
    .tp_getset = router_getset,
    .tp_methods = router_methods,
};

/* register_router(fd, router, side); the router's forget(side) hands the fd back. */
PyObject *
speedups_register_router(PyObject *module, PyObject *args)
{
    int fd, side;
    PyObject *router;
    if (!PyArg_ParseTuple(args, "iO!i", &fd, &RouterType, &router, &side))
        return NULL;
    if (fd < 0 || side < 0 || side >= ROUTER_SIDES || ((Router *)router)->fds[side] != fd) {
        PyErr_SetString(PyExc_ValueError, "not this router's fd for that side");
        return NULL;
    }
    if (slots_reserve(fd) < 0)
        return NULL;
    Py_INCREF(router);
    slot_clear(fd);
    slots[fd].router = (Router *)router;
    slots[fd].side = SIDE_ROUTED + side;
    Py_RETURN_NONE;
}
