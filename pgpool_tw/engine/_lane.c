/* pgpool_tw._speedups: warm logins, from accept to login (see _warm.c, pgpool_tw/engine/warm.py). */
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
 * Pending clients time out by sweep(): Python calls it every
 * authentication_timeout, and a client still pending at the next sweep is closed.
 */

/* The next cancel secret of Python's block, used once and wiped; -1 when none is left. */
static int
lane_take_key(Lane *lane, unsigned char *out)
{
    if (lane->keys_left < 4)
        return -1;
    lane->keys_left -= 4;
    memcpy(out, lane->keys + lane->keys_left, 4);
    memset(lane->keys + lane->keys_left, 0, 4);
    return 0;
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

/* A warm relay's tracker, for a new session on the same server. */
static void
tracker_restart(Tracker *t)
{
    t->pending = 0;
    t->unsynced = 0;
    t->status = IDLE;
    t->c_skip = t->s_skip = t->s_need = 0;
    t->c_head_len = t->s_head_len = 0;
    t->s_body_len = 0;
    t->changed = 0;
}

/*
 * The end of the login: Python's bytes (engine/warm.py builds them with
 * protocol/login_end.py, as a Python login sends them), with this session's
 * secret written where Python said it goes.
 */
static int
send_login_end(Relay *r, const unsigned char *secret)
{
    memcpy(r->login + r->secret_at, secret, 4);
    return warm_send_client(r, r->login, r->login_len);
}

/* A whole startup packet: a warm login, or a miss. */
static int
pending_startup(Lane *lane, int fd, Pending *p)
{
    if (lane->closing || lane->free <= 0)
        return pending_miss(lane, fd); /* Python queues it (num_init_children) */
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
    unsigned char secret[4];
    if (lane_take_key(lane, secret) < 0)
        return pending_miss(lane, fd); /* no key left: Python's login makes its own */
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
    /* The client's address outlives its Pending, which the slot change frees. */
    unsigned char addr[16];
    int addr_len = p->addr_len, port = p->port;
    memcpy(addr, p->addr, sizeof(addr));
    /* The client's socket is the relay's now; both are watched as one session. */
    if (slot_set_relay(fd, r, SIDE_CLIENT) < 0 || slot_set_relay(r->fds[1], r, SIDE_SERVER) < 0) {
        Py_DECREF(item);
        return -1;
    }
    lane->pending--;
    lane->free--;
    lane->active++;
    lane->hits++;
    r->fds[0] = fd;
    r->wstate = W_ACTIVE;
    r->secret = (uint32_t)length_at(secret); /* as BackendKeyData carries it: big-endian */
    r->received = 0;
    r->uses++;
    if (r->uses_left > 0)
        r->uses_left--;
    lane_note(lane, NOTE_STARTED, r, addr, addr_len, port);
    tracker_restart(r->tracker);
    int rc = send_login_end(r, secret);
    Py_DECREF(item);
    return rc;
}

/* The answer Python allows to this whole packet, or NULL (not in Lane.answers, or a repeat). */
static const Answer *
lane_answer(Lane *lane, const Pending *p, int64_t length)
{
    if (length != REQUEST_LEN)
        return NULL;
    for (int i = 0; i < lane->answers_len; i++) {
        const Answer *a = &lane->answers[i];
        if (memcmp(p->buf, a->request, REQUEST_LEN) == 0)
            return p->answered & a->bit ? NULL : a;
    }
    return NULL;
}

/*
 * One event of a client the lane accepted and has not logged in yet.  Only
 * the packets' framing is read here: a request in Lane.answers is answered (at
 * most once), a whole packet alone is looked up in Lane.entries, and every
 * other case is Python's handshake's to judge (a miss).
 */
int
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
        if (p->len < 4)
            return 0;
        int64_t length = length_at(p->buf);
        if (length < REQUEST_LEN || length > PENDING_MAX)
            return pending_miss(lane, fd); /* Python's handshake names the error */
        if (p->len < length)
            return 0;
        const Answer *a = lane_answer(lane, p, length);
        if (a == NULL)
            return p->len == length ? pending_startup(lane, fd, p) : pending_miss(lane, fd);
        if (send(fd, &a->answer, 1, MSG_NOSIGNAL) != 1) {
            pending_close(lane, fd);
            return 0;
        }
        p->answered |= a->bit;
        p->len -= REQUEST_LEN;
        memmove(p->buf, p->buf + REQUEST_LEN, (size_t)p->len);
    }
}

/* The listening socket is readable: accept what is there. */
int
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
        p->port = 0;
        if (sa.ss_family == AF_INET) {
            p->addr_len = 4;
            memcpy(p->addr, &((struct sockaddr_in *)&sa)->sin_addr, 4);
            p->port = ntohs(((struct sockaddr_in *)&sa)->sin_port);
        } else if (sa.ss_family == AF_INET6) {
            p->addr_len = 16;
            memcpy(p->addr, &((struct sockaddr_in6 *)&sa)->sin6_addr, 16);
            p->port = ntohs(((struct sockaddr_in6 *)&sa)->sin6_port);
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
    {"sweep", (PyCFunction)lane_sweep, METH_NOARGS,
     "Close clients pending since the last sweep; returns how many."},
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

