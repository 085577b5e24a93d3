/* pgpool_tw._speedups: the Lane type, warm logins (_login.c logs in, _warm.c relays; see lane/warm.py). */
#include "_speedups.h"

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
 *   GSSENCRequest get their 'N' here, from the table `answers` Python builds
 *   (session/handshake.py's lane_answers), each at most once.  A startup
 *   packet that hits an entry with a parked relay, while a client slot is
 *   free, takes the relay: the client gets the login's end Python built
 *   (protocol/login_end.py) with a cancel secret from the random bytes Python
 *   handed down (add_keys), and the session is relayed like any other.
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
 * Pending clients time out by sweep(cutoff): Python calls it on its tick with
 * the CLOCK_MONOTONIC second before which a login must have finished (now less
 * authentication_timeout), and a client accepted at or before it is closed.
 */

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
    return 0;
}

static int
lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->entries);
    Py_VISIT(self->on_miss);
    Py_VISIT(self->on_event);
    Py_VISIT(self->log);
    return 0;
}

static int
lane_clear(Lane *self)
{
    Py_CLEAR(self->entries);
    Py_CLEAR(self->on_miss);
    Py_CLEAR(self->on_event);
    Py_CLEAR(self->log);
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

/* Close pending clients: all (`all`), or those accepted at or before `cutoff`; each
 * closed one is appended to `closed` (when not NULL) as (address, port, bytes read,
 * answered) for Python's log. */
static long
lane_close_pending(Lane *self, int all, double cutoff, PyObject *closed)
{
    long count = 0;
    for (int fd = 0; fd < slots_size; fd++) {
        if (lane_owns(self, fd, SIDE_PENDING) &&
            (all || slots[fd].pending->accepted_at <= cutoff)) {
            Pending *p = slots[fd].pending;
            if (closed != NULL) {
                PyObject *item = Py_BuildValue("(y#iii)", (const char *)p->addr,
                                               (Py_ssize_t)p->addr_len, p->port, p->len,
                                               p->answered);
                if (item == NULL || PyList_Append(closed, item) < 0) {
                    Py_XDECREF(item);
                    return -1;
                }
                Py_DECREF(item);
            }
            pending_close(self, fd);
            count++;
        }
    }
    return count;
}

/* The pending client accepted first, or -1. */
static int
lane_oldest_fd(Lane *self)
{
    int oldest = -1;
    for (int fd = 0; fd < slots_size; fd++) {
        if (lane_owns(self, fd, SIDE_PENDING) &&
            (oldest < 0 || slots[fd].pending->accepted_at < slots[oldest].pending->accepted_at))
            oldest = fd;
    }
    return oldest;
}

/* pending_cap reached: the oldest pending client makes room for a new one. */
void
lane_shed_oldest(Lane *self)
{
    int fd = lane_oldest_fd(self);
    if (fd >= 0) {
        pending_close(self, fd);
        self->shed++;
    }
}

static PyObject *
lane_sweep(Lane *self, PyObject *arg)
{
    double cutoff = PyFloat_AsDouble(arg);
    if (cutoff == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *closed = PyList_New(0);
    if (closed == NULL)
        return NULL;
    if (lane_close_pending(self, 0, cutoff, closed) < 0) {
        Py_DECREF(closed);
        return NULL;
    }
    return closed;
}

static PyObject *
lane_oldest_pending(Lane *self, PyObject *unused)
{
    int fd = lane_oldest_fd(self);
    if (fd < 0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(slots[fd].pending->accepted_at);
}

static PyObject *
lane_shed(Lane *self, PyObject *unused)
{
    int fd = lane_oldest_fd(self);
    if (fd < 0)
        Py_RETURN_FALSE;
    pending_close(self, fd);
    Py_RETURN_TRUE;
}

static PyObject *
lane_drop_pending(Lane *self, PyObject *unused)
{
    return PyLong_FromLong(lane_close_pending(self, 1, 0.0, NULL));
}

static PyObject *
lane_add_keys(Lane *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t room = KEYS_MAX - self->keys_left;
    Py_ssize_t n = view.len < room ? view.len : room;
    n -= n % 4;
    memcpy(self->keys + self->keys_left, view.buf, (size_t)n);
    self->keys_left += (int)n;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(n);
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

/*
 * Equal cancel secrets, in a time that does not depend on where they differ
 * (as hmac.compare_digest on Python's side): every byte is looked at, no early
 * exit, and `volatile` keeps the compiler from turning it back into `==`.
 */
static int
secret_equal(uint32_t a, uint32_t b)
{
    volatile uint32_t diff = a ^ b;
    unsigned acc = 0;
    for (int i = 0; i < 4; i++)
        acc |= (diff >> (8 * i)) & 0xFFu;
    return acc == 0;
}

static PyObject *
lane_find(Lane *self, PyObject *args)
{
    long long pid, secret;
    if (!PyArg_ParseTuple(args, "LL", &pid, &secret))
        return NULL;
    for (int fd = 0; fd < slots_size; fd++) {
        Relay *r = slots[fd].relay;
        if (r == NULL || slots[fd].side != SIDE_CLIENT || r->lane != self ||
            r->wstate != W_ACTIVE)
            continue;
        /* `&`, not `&&`: the secret is compared whatever the pid says. */
        if ((r->pid == (uint32_t)pid) & secret_equal(r->secret, (uint32_t)secret))
            return relay_get_object(r->server);
    }
    Py_RETURN_NONE;
}

static PyObject *
lane_get_log(Lane *self, void *closure)
{
    return relay_get_object(self->log);
}

static int
lane_set_log(Lane *self, PyObject *value, void *closure)
{
    if (value != NULL && value != Py_None && !PyList_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "log must be a list or None");
        return -1;
    }
    PyObject *log = value == Py_None ? NULL : value;
    Py_XINCREF(log);
    Py_XSETREF(self->log, log);
    return 0;
}

static PyObject *
lane_get_entries(Lane *self, void *closure)
{
    return relay_get_object(self->entries);
}

static PyObject *
lane_get_answers(Lane *self, void *closure)
{
    PyObject *table = PyDict_New();
    for (int i = 0; table != NULL && i < self->answers_len; i++) {
        const Answer *a = &self->answers[i];
        PyObject *value = Py_BuildValue("(y#i)", (const char *)&a->answer, (Py_ssize_t)1, a->bit);
        PyObject *key = PyBytes_FromStringAndSize((const char *)a->request, REQUEST_LEN);
        if (value == NULL || key == NULL || PyDict_SetItem(table, key, value) < 0)
            Py_CLEAR(table);
        Py_XDECREF(value);
        Py_XDECREF(key);
    }
    return table;
}

/* Copied into a C table: a lookup on a client's first packet touches no Python object. */
static int
lane_set_answers(Lane *self, PyObject *value, void *closure)
{
    Answer table[ANSWERS_MAX];
    Py_ssize_t pos = 0;
    PyObject *key, *item;
    int n = 0;
    if (value == NULL || !PyDict_Check(value) || PyDict_GET_SIZE(value) > ANSWERS_MAX) {
        PyErr_SetString(PyExc_TypeError, "answers must be a dict of at most 4 entries");
        return -1;
    }
    while (PyDict_Next(value, &pos, &key, &item)) {
        const char *answer;
        Py_ssize_t answer_len;
        int bit;
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) != REQUEST_LEN ||
            !PyArg_ParseTuple(item, "y#i", &answer, &answer_len, &bit) || answer_len != 1 ||
            bit <= 0) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError,
                            "answers: {8-byte request: (1-byte answer, positive bit)}");
            return -1;
        }
        memcpy(table[n].request, PyBytes_AS_STRING(key), REQUEST_LEN);
        table[n].answer = (unsigned char)answer[0];
        table[n].bit = bit;
        n++;
    }
    memcpy(self->answers, table, sizeof(table));
    self->answers_len = n;
    return 0;
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

LANE_GET(closing)
LANE_SET(closing)
LANE_GET(wake)
LANE_SET(wake)
LANE_GET(free)
LANE_SET(free)
LANE_GET(active)
LANE_GET(keys_left)
LANE_GET(pending)
LANE_GET(hits)
LANE_GET(misses)
LANE_GET(pending_cap)
LANE_SET(pending_cap)
LANE_GET(shed)
LANE_SET(shed)

#define LANE_RW(name, doc) {#name, (getter)lane_get_##name, (setter)lane_set_##name, doc, NULL}
#define LANE_RO(name, doc) {#name, (getter)lane_get_##name, NULL, doc, NULL}

static PyGetSetDef lane_getset[] = {
    {"entries", (getter)lane_get_entries, NULL,
     "address + startup packet -> the list of warm relays parked for such clients", NULL},
    {"answers", (getter)lane_get_answers, (setter)lane_set_answers,
     "{request packet (8 bytes): (answer (1 byte), bit)}: requests the lane answers itself, "
     "each at most once; the bits of those answered are on_miss's `answered`.", NULL},
    LANE_RW(closing, "Log nobody in and park nothing (a shutdown)."),
    LANE_RW(wake, "Call on_event(EV_LEFT) when a session ends (clients wait for a slot)."),
    LANE_RW(free, "Client slots free (Pool.free_slots): a warm login takes one, its end "
                  "gives it back; none free: a miss."),
    LANE_RO(active, "Warm sessions relayed now."),
    LANE_RO(keys_left, "Bytes of cancel secrets left (4 per warm login; none left: a miss)."),
    LANE_RO(pending, "Accepted clients whose startup packet is not read yet."),
    LANE_RO(hits, "Clients logged in here."),
    LANE_RO(misses, "Clients handed to on_miss."),
    LANE_RW(pending_cap, "Pending clients at most (0: no cap): an accept past it closes the "
                         "oldest pending client first (Python's pre-authentication cap)."),
    LANE_RW(shed, "Pending clients closed for pending_cap since Python last zeroed it."),
    {"log", (getter)lane_get_log, (setter)lane_set_log,
     "None, or a list the lane appends (kind, relay, address, port) to as warm sessions "
     "start (NOTE_STARTED) and end (NOTE_ENDED): set while observers watch.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef lane_methods[] = {
    {"listen", (PyCFunction)lane_listen, METH_O,
     "listen(fd): accept on this listening socket (Twisted must not watch it)."},
    {"unlisten", (PyCFunction)lane_unlisten, METH_O,
     "unlisten(fd): stop accepting on it (no-op if not listening)."},
    {"sweep", (PyCFunction)lane_sweep, METH_O,
     "sweep(cutoff): close clients still logging in that were accepted at or before cutoff "
     "(CLOCK_MONOTONIC seconds, Python's time.monotonic); returns them as a list of "
     "(address bytes, port, bytes read, answered)."},
    {"oldest_pending", (PyCFunction)lane_oldest_pending, METH_NOARGS,
     "When the oldest pending client was accepted (CLOCK_MONOTONIC), or None."},
    {"shed_oldest", (PyCFunction)lane_shed, METH_NOARGS,
     "Close the oldest pending client; False when there is none."},
    {"drop_pending", (PyCFunction)lane_drop_pending, METH_NOARGS,
     "Close every pending client; returns how many."},
    {"add_keys", (PyCFunction)lane_add_keys, METH_O,
     "add_keys(random_bytes): cancel secrets for warm logins, 4 bytes each; returns how many "
     "bytes were taken (whole keys, up to 4096 held)."},
    {"sessions", (PyCFunction)lane_sessions, METH_NOARGS,
     "The warm relays with a client now."},
    {"find", (PyCFunction)lane_find, METH_VARARGS,
     "find(pid, secret): the server connection a warm session's cancel key points at."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.Lane",
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

