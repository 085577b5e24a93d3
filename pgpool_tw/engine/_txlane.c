/*
 * pgpool_tw._speedups: TxLane, transaction pooling's fast path on the C loop.
 *
 * In transaction mode (pgpool_tw/session/transaction/) a client holds a server only for
 * one transaction.  Python decides everything: which servers of a pool key may be lent
 * here (pool/leases.py gives them, takes them back, counts them), which query texts
 * leave nothing in a server session (`shapes`: a shape key, _shape.c, -> 1, filled by
 * session/transaction/effects.py), when a client may be served here (its TxClient is
 * armed, with the tag of its settings: a server is only paired with a client of the
 * same tag, so nothing needs replaying), and what happens to anything else.

 * While armed, a client chunk that is exactly one Query whose shape is in `shapes`
 * takes the most recently parked idle server of the client's tag, is sent, and the
 * answer goes back with its headers walked.  Its ReadyForQuery saying idle ends the
 * transaction: the server serves the first client waiting here, or parks again.  One
 * saying in a transaction block (or failed) keeps the server: the client's next chunk
 * goes to it when it is such a Query too, else the transaction is Python's.  A client
 * Python pinned to its server (`hold`: what it left in the server session keeps it
 * there) has it here between transactions the same way, with the status idle.  No
 * server free and no room for another (`room`, Python's): the client waits here, in
 * arrival order with Python's waiters (`arrive`, `py_first`: sequence numbers), and a
 * server freed while Python's first waiter came first goes to Python
 * (on_event(EV_TX_RETURN, server)).
 *
 * Everything else is Python's: another chunk is handed to on_data (the client is
 * disarmed: Twisted reads it until Python arms it again); an answer with a message
 * other than RowDescription, DataRow, CommandComplete, NoticeResponse, ErrorResponse,
 * EmptyQueryResponse or one last ReadyForQuery, a client that Twisted is still writing
 * to, a socket that fails, another chunk inside a block: the transaction is adopted by
 * Python (on_adopt(server, raw_left, rest, status): status 0, a Query was sent and
 * nothing of its answer but the bytes before `rest` and `raw_left` body bytes of a
 * message already half forwarded; else nothing is owed and the block's status is
 * that).  An idle server that becomes readable is Python's too
 * (on_event(EV_TX_LOST, server)): Twisted reads it.
 */
#include "_speedups.h"

#define MESSAGE_MAX 0x3FFFFFFF
#define TX_PENDING_LIMIT (1 << 20)

struct TxLane;
struct TxClient;

typedef struct TxServer {
    PyObject_HEAD
    struct TxLane *lane;     /* borrowed: set while the lane has it (parked or busy) */
    struct TxClient *client; /* borrowed: the client it serves now, in a C transaction */
    PyObject *backend;       /* Python's server connection */
    PyObject *transport;
    PyObject *fd_obj;
    int fd;
    long tag;
    double parked_at;
} TxServer;

typedef struct TxClient {
    PyObject_HEAD
    struct TxLane *lane;
    PyObject *transport, *fd_obj, *on_data, *on_adopt, *owner;
    int fd;
    int armed;
    long tag;
    TxServer *server; /* owned: the server of the transaction running here */
    int owed;         /* its answer is being forwarded (else: a block between statements) */
    int status;       /* the block's status when nothing is owed ('T', 'E'; 'I' held) */
    int held;         /* the server is the client's own between transactions (pinned) */
    int64_t skip;     /* body bytes of the server message being forwarded */
    unsigned char *pend; /* client bytes kept: a waiting chunk, or sent during an answer */
    Py_ssize_t pend_len, pend_cap;
    int queued;
    long long seq;
    double queued_at;
    struct TxClient *next; /* the lane's queue (owned by the queue) */
    long received;
} TxClient;

typedef struct TxLane {
    PyObject_HEAD
    PyObject *shapes, *writes, *on_event;
    TxServer **idle; /* owned: the parked servers, least recently parked first */
    Py_ssize_t idle_len, idle_cap;
    TxClient *head, *tail; /* clients waiting here */
    long waiting, busy;
    long long seq, py_first;
    int room;
    long long hits, misses, adopted;
    long long queries, xacts, bytes_in, bytes_out; /* Python harvests them (take_counts) */
    unsigned char key[ROUTE_TEXT_MAX + 1];
} TxLane;

/* ------------------------------------------------------------------------- */
/* Helpers                                                                    */
/* ------------------------------------------------------------------------- */

static int
tx_send(PyObject *writes, int fd, PyObject *fd_obj, PyObject *transport,
        const unsigned char *data, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    int busy = PySet_Contains(writes, fd_obj);
    if (busy < 0)
        return -1;
    if (busy)
        return send_queued(transport, data, n);
    return send_now(fd, transport, data, n);
}

static int
tx_register(int fd, PyObject *obj, int side)
{
    if (slots_reserve(fd) < 0)
        return -1;
    if (slots[fd].tx == obj && slots[fd].side == side)
        return 0;
    Py_INCREF(obj);
    slot_clear(fd);
    slots[fd].tx = obj;
    slots[fd].side = side;
    return 0;
}

static void
tx_unregister(int fd, PyObject *obj)
{
    if (fd >= 0 && fd < slots_size && slots[fd].tx == obj)
        slot_clear(fd);
}

static int
call_python(PyObject *callable, PyObject *arg)
{
    ran_python = 1;
    PyObject *res = PyObject_CallOneArg(callable, arg);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* The class of a chunk that is exactly one Query with a shape Python listed; 0: not. */
static int
tx_class(TxLane *lane, const unsigned char *data, Py_ssize_t n)
{
    if (n < 6 || data[0] != C_QUERY || length_at(data + 1) + 1 != n || data[n - 1] != 0)
        return 0;
    Py_ssize_t text = n - 6;
    if (text > ROUTE_TEXT_MAX)
        return 0;
    Py_ssize_t len = shape_key_into(data + 5, text, lane->key);
    if (len < 0)
        return 0;
    PyObject *key = PyBytes_FromStringAndSize((const char *)lane->key, len);
    if (key == NULL)
        return -1;
    PyObject *value = PyDict_GetItemWithError(lane->shapes, key); /* borrowed */
    Py_DECREF(key);
    if (value == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return PyLong_Check(value) && PyLong_AsLong(value) == 1;
}

/* -- the parked servers ---------------------------------------------------- */

static int
idle_push(TxLane *lane, TxServer *s)
{
    if (lane->idle_len == lane->idle_cap) {
        Py_ssize_t cap = lane->idle_cap ? lane->idle_cap * 2 : 32;
        TxServer **grown = PyMem_Realloc(lane->idle, sizeof(TxServer *) * (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        lane->idle = grown;
        lane->idle_cap = cap;
    }
    Py_INCREF(s);
    lane->idle[lane->idle_len++] = s;
    return 0;
}

/* Take the parked server at `i` out of the stack; the caller owns the reference. */
static TxServer *
idle_take_at(TxLane *lane, Py_ssize_t i)
{
    TxServer *s = lane->idle[i];
    memmove(lane->idle + i, lane->idle + i + 1, sizeof(TxServer *) * (size_t)(lane->idle_len - i - 1));
    lane->idle_len--;
    return s;
}

static Py_ssize_t
idle_find(TxLane *lane, TxServer *s)
{
    for (Py_ssize_t i = lane->idle_len - 1; i >= 0; i--)
        if (lane->idle[i] == s)
            return i;
    return -1;
}

/* A server leaves the lane: Twisted reads its socket from now on. */
static void
server_leave(TxServer *s)
{
    tx_unregister(s->fd, (PyObject *)s);
    s->lane = NULL;
    s->client = NULL;
}

/* -- the queue --------------------------------------------------------------- */

static void
queue_add(TxLane *lane, TxClient *c)
{
    Py_INCREF(c);
    c->queued = 1;
    c->seq = ++lane->seq;
    c->queued_at = monotonic_s();
    c->next = NULL;
    if (lane->tail != NULL)
        lane->tail->next = c;
    else
        lane->head = c;
    lane->tail = c;
    lane->waiting++;
}

/* Out of the queue; the caller owns the queue's reference. */
static void
queue_remove(TxLane *lane, TxClient *c)
{
    TxClient *prev = NULL;
    for (TxClient *each = lane->head; each != NULL; prev = each, each = each->next) {
        if (each != c)
            continue;
        if (prev != NULL)
            prev->next = c->next;
        else
            lane->head = c->next;
        if (lane->tail == c)
            lane->tail = prev;
        break;
    }
    c->next = NULL;
    c->queued = 0;
    lane->waiting--;
}

/* ------------------------------------------------------------------------- */
/* A transaction                                                              */
/* ------------------------------------------------------------------------- */

static int lane_give(TxLane *lane, TxServer *s);
static int client_chunk(TxClient *c, const unsigned char *data, Py_ssize_t n);

static PyObject *
take_pend(TxClient *c)
{
    if (c->pend_len == 0)
        return NULL;
    PyObject *kept = PyBytes_FromStringAndSize((const char *)c->pend, c->pend_len);
    c->pend_len = 0;
    return kept;
}

/* Python's turn for a client chunk: the client is disarmed first. */
static int
client_miss(TxClient *c, const unsigned char *data, Py_ssize_t n)
{
    c->armed = 0;
    if (c->lane != NULL)
        c->lane->misses++;
    if (n <= 0 || c->on_data == NULL)
        return 0;
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)data, n);
    if (chunk == NULL)
        return -1;
    int rc = call_python(c->on_data, chunk);
    Py_DECREF(chunk);
    return rc;
}

/* A waiting client's kept chunk goes to Python (no server for it here). */
static int
client_miss_kept(TxClient *c)
{
    PyObject *kept = take_pend(c);
    if (kept == NULL)
        return PyErr_Occurred() ? -1 : client_miss(c, NULL, 0);
    int rc = client_miss(c, (const unsigned char *)PyBytes_AS_STRING(kept), PyBytes_GET_SIZE(kept));
    Py_DECREF(kept);
    return rc;
}

/* Start a transaction: `s` (a reference the caller gives) serves `c`. */
static int
pair(TxClient *c, TxServer *s, const unsigned char *data, Py_ssize_t n)
{
    TxLane *lane = c->lane;
    c->server = s;
    s->client = c;
    c->skip = 0;
    c->owed = 1;
    lane->busy++;
    lane->hits++;
    lane->bytes_in += n;
    return tx_send(lane->writes, s->fd, s->fd_obj, s->transport, data, n);
}

/* The transaction is Python's from here (see the top of this file). */
static int
adopt(TxClient *c, int64_t raw_left, const unsigned char *rest, Py_ssize_t rest_len)
{
    TxServer *s = c->server;
    TxLane *lane = c->lane;
    c->server = NULL;
    c->armed = 0;
    c->held = 0;
    if (s == NULL)
        return 0;
    if (lane != NULL) {
        lane->busy--;
        lane->adopted++;
    }
    server_leave(s);
    PyObject *kept = take_pend(c);
    int rc = 0;
    if (kept == NULL && PyErr_Occurred())
        rc = -1;
    if (rc == 0 && c->on_adopt != NULL) {
        ran_python = 1;
        PyObject *res = PyObject_CallFunction(
            c->on_adopt, "OLy#i", (PyObject *)s, (long long)raw_left,
            rest != NULL ? (const char *)rest : "", rest_len, c->owed ? 0 : c->status);
        if (res == NULL)
            rc = -1;
        Py_XDECREF(res);
    }
    if (rc == 0 && kept != NULL && c->on_data != NULL)
        rc = call_python(c->on_data, kept);
    Py_XDECREF(kept);
    Py_DECREF(s);
    return rc;
}

/* Forward what came before `at`, then hand the transaction over at that boundary. */
static int
adopt_at(TxClient *c, const unsigned char *data, Py_ssize_t at, Py_ssize_t n)
{
    c->lane->bytes_out += at;
    if (tx_send(c->lane->writes, c->fd, c->fd_obj, c->transport, data, at) < 0)
        return -1;
    return adopt(c, 0, data + at, n - at);
}

/* The answer ended idle: the server goes back, then what the client sent meanwhile. */
static int
finish(TxClient *c)
{
    TxServer *s = c->server;
    TxLane *lane = c->lane;
    c->server = NULL;
    s->client = NULL;
    lane->busy--;
    lane->queries++;
    lane->xacts++;
    int rc = lane_give(lane, s);
    Py_DECREF(s);
    if (rc < 0)
        return -1;
    PyObject *kept = take_pend(c);
    if (kept == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (c->armed && c->server == NULL && !c->queued)
        rc = client_chunk(c, (const unsigned char *)PyBytes_AS_STRING(kept), PyBytes_GET_SIZE(kept));
    else if (c->on_data != NULL)
        rc = call_python(c->on_data, kept);
    Py_DECREF(kept);
    return rc;
}

static int client_in_block(TxClient *c, const unsigned char *data, Py_ssize_t n);

/* The answer ended inside a transaction block: the server stays; what the client sent
   meanwhile is its next chunk. */
static int
block_wait(TxClient *c, int status)
{
    c->owed = 0;
    c->status = status;
    c->lane->queries++;
    if (status == IDLE)
        c->lane->xacts++;
    PyObject *kept = take_pend(c);
    if (kept == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int rc =
        client_in_block(c, (const unsigned char *)PyBytes_AS_STRING(kept), PyBytes_GET_SIZE(kept));
    Py_DECREF(kept);
    return rc;
}

/* A client chunk inside a block: sent when it is a listed Query, else the block is
   Python's from here, the chunk first. */
static int
client_in_block(TxClient *c, const unsigned char *data, Py_ssize_t n)
{
    TxServer *s = c->server;
    int cls = tx_class(c->lane, data, n);
    if (cls < 0)
        return -1;
    if (cls == 0) {
        if (buffer_append(&c->pend, &c->pend_len, &c->pend_cap, data, n) < 0)
            return -1;
        return adopt(c, 0, NULL, 0);
    }
    c->owed = 1;
    c->skip = 0;
    c->lane->hits++;
    c->lane->bytes_in += n;
    return tx_send(c->lane->writes, s->fd, s->fd_obj, s->transport, data, n);
}

/* A chunk of the server that answers `c`. */
static int
server_reply(TxClient *c, const unsigned char *data, Py_ssize_t n)
{
    Py_ssize_t pos = 0;
    while (pos < n) {
        if (c->skip > 0) {
            int64_t take = c->skip < n - pos ? c->skip : n - pos;
            pos += (Py_ssize_t)take;
            c->skip -= take;
            continue;
        }
        unsigned char type = data[pos];
        Py_ssize_t need = type == S_READY ? 6 : 5;
        if (n - pos < need) /* a header cut by the chunk: rare, and Python's */
            return adopt_at(c, data, pos, n);
        int64_t len = length_at(data + pos + 1);
        if (len < 4 || len > MESSAGE_MAX)
            return adopt_at(c, data, pos, n);
        switch (type) {
        case 'T': case 'D': case 'C': case 'N': case 'E': case 'I':
            pos += 5;
            c->skip = len - 4;
            break;
        case S_READY: {
            /* The chunk's last message: anything after it is Python's. */
            int status = len == 5 && pos + 6 == n ? data[pos + 5] : 0;
            if (status != IDLE && status != 'T' && status != 'E')
                return adopt_at(c, data, pos, n);
            c->lane->bytes_out += n;
            if (tx_send(c->lane->writes, c->fd, c->fd_obj, c->transport, data, n) < 0)
                return -1;
            if (status == IDLE && !c->held)
                return finish(c);
            return block_wait(c, status);
        }
        default:
            return adopt_at(c, data, pos, n);
        }
    }
    c->lane->bytes_out += n;
    return tx_send(c->lane->writes, c->fd, c->fd_obj, c->transport, data, n);
}

/* -- a free server ------------------------------------------------------------ */

/* `s` is free (the caller keeps its own reference): Python's first waiter, the first
   waiting client here, or the stack. */
static int
lane_give(TxLane *lane, TxServer *s)
{
    s->lane = lane;
    s->client = NULL;
    s->parked_at = monotonic_s();
    TxClient *head = lane->head;
    if (lane->py_first > 0 && (head == NULL || lane->py_first < head->seq)) {
        server_leave(s);
        ran_python = 1;
        PyObject *res = PyObject_CallFunction(lane->on_event, "iO", EV_TX_RETURN, (PyObject *)s);
        if (res == NULL)
            return -1;
        Py_DECREF(res);
        return 0;
    }
    if (tx_register(s->fd, (PyObject *)s, SIDE_TX_SERVER) < 0)
        return -1;
    if (head == NULL)
        return idle_push(lane, s);
    queue_remove(lane, head); /* its reference is ours now */
    int rc;
    if (head->tag == s->tag && head->fd >= 0) {
        PyObject *kept = take_pend(head);
        if (kept == NULL && PyErr_Occurred()) {
            Py_DECREF(head);
            return -1;
        }
        Py_INCREF(s);
        rc = pair(head, s, kept ? (const unsigned char *)PyBytes_AS_STRING(kept) : NULL,
                  kept ? PyBytes_GET_SIZE(kept) : 0);
        Py_XDECREF(kept);
    } else {
        /* Another tag: the server parks, and Python serves the client (its replay). */
        rc = idle_push(lane, s);
        if (rc == 0)
            rc = client_miss_kept(head);
    }
    Py_DECREF(head);
    return rc;
}

/* -- a client chunk ------------------------------------------------------------ */

/* A chunk of an armed client with no transaction here: served, queued, or Python's. */
static int
client_chunk(TxClient *c, const unsigned char *data, Py_ssize_t n)
{
    TxLane *lane = c->lane;
    int cls = tx_class(lane, data, n);
    if (cls < 0)
        return -1;
    if (cls == 0)
        return client_miss(c, data, n);
    for (Py_ssize_t i = lane->idle_len - 1; i >= 0; i--) {
        if (lane->idle[i]->tag == c->tag)
            return pair(c, idle_take_at(lane, i), data, n);
    }
    if (lane->idle_len > 0 || lane->room)
        return client_miss(c, data, n); /* Python replays, or opens a server */
    if (buffer_append(&c->pend, &c->pend_len, &c->pend_cap, data, n) < 0)
        return -1;
    queue_add(lane, c);
    return 0;
}

/* The client's socket fails or ends: what runs here is Python's, then Twisted's. */
static int
client_gone(TxClient *c)
{
    if (c->queued && c->lane != NULL) {
        queue_remove(c->lane, c);
        c->pend_len = 0;
        Py_DECREF(c);
    }
    c->armed = 0;
    return adopt(c, c->skip, NULL, 0);
}

static int
client_event(TxClient *c, unsigned int ev)
{
    if (c->lane == NULL || (!c->armed && c->server == NULL && !c->queued))
        return TO_TWISTED;
    if (!(ev & EPOLLIN)) {
        if (client_gone(c) < 0)
            return -1;
        return TO_TWISTED;
    }
    ssize_t n;
    int got = take_chunk(c->fd, &n);
    if (got == PUMPED)
        return PUMPED;
    if (got != GOT_CHUNK) {
        if (client_gone(c) < 0)
            return -1;
        return got;
    }
    c->received++;
    if (c->server != NULL && !c->owed)
        return client_in_block(c, recv_buffer, n) < 0 ? -1 : PUMPED;
    if (c->server != NULL || c->queued) {
        /* Sent during an answer or while waiting: kept, in order, for after it. */
        if (buffer_append(&c->pend, &c->pend_len, &c->pend_cap, recv_buffer, n) < 0)
            return -1;
        if (c->pend_len > TX_PENDING_LIMIT) {
            if (c->server != NULL)
                return adopt(c, c->skip, NULL, 0) < 0 ? -1 : PUMPED;
            queue_remove(c->lane, c);
            int rc = client_miss_kept(c);
            Py_DECREF(c);
            return rc < 0 ? -1 : PUMPED;
        }
        return PUMPED;
    }
    return client_chunk(c, recv_buffer, n) < 0 ? -1 : PUMPED;
}

static int
server_event(TxServer *s, unsigned int ev)
{
    TxClient *c = s->client;
    TxLane *lane = s->lane;
    if (lane == NULL)
        return TO_TWISTED;
    if (c == NULL) {
        /* Parked and readable (it closed, or says something unasked): Python's. */
        Py_ssize_t i = idle_find(lane, s);
        server_leave(s);
        if (i >= 0) {
            TxServer *taken = idle_take_at(lane, i);
            ran_python = 1;
            PyObject *res =
                PyObject_CallFunction(lane->on_event, "iO", EV_TX_LOST, (PyObject *)taken);
            Py_DECREF(taken);
            if (res == NULL)
                return -1;
            Py_DECREF(res);
        }
        return TO_TWISTED;
    }
    if (!(ev & EPOLLIN) || !c->owed) {
        /* Failing, or speaking unasked inside a block: Python's, then Twisted reads it. */
        if (adopt(c, c->skip, NULL, 0) < 0)
            return -1;
        return TO_TWISTED;
    }
    /* Twisted still writes to the client: its flow control takes the rest. */
    int busy = PySet_Contains(lane->writes, c->fd_obj);
    if (busy < 0)
        return -1;
    if (busy) {
        if (adopt(c, c->skip, NULL, 0) < 0)
            return -1;
        return TO_TWISTED;
    }
    ssize_t n;
    int got = take_chunk(s->fd, &n);
    if (got == PUMPED)
        return PUMPED;
    if (got != GOT_CHUNK) {
        if (adopt(c, c->skip, NULL, 0) < 0)
            return -1;
        return got;
    }
    return server_reply(c, recv_buffer, n) < 0 ? -1 : PUMPED;
}

int
tx_event(PyObject *obj, int side, unsigned int ev)
{
    if (side == SIDE_TX_CLIENT)
        return client_event((TxClient *)obj, ev);
    return server_event((TxServer *)obj, ev);
}

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
        queue_remove(self->lane, self);
        self->pend_len = 0;
        Py_DECREF(self);
    }
    self->armed = 0;
    if (self->server != NULL && adopt(self, self->skip, NULL, 0) < 0)
        return NULL;
    tx_unregister(self->fd, (PyObject *)self);
    self->fd = -1;
    Py_RETURN_NONE;
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

static PyObject *
txclient_get_received(TxClient *self, void *closure)
{
    return PyLong_FromLong(self->received);
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
    {"armed", (getter)txclient_get_armed, NULL, "Its next chunk may be served here.", NULL},
    {"waiting", (getter)txclient_get_waiting, NULL, "It waits here for a server.", NULL},
    {"received", (getter)txclient_get_received, NULL, "Chunks received here.", NULL},
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
        TxServer *s = idle_take_at(self, self->idle_len - 1);
        server_leave(s);
        Py_DECREF(s);
    }
    while (self->head != NULL) {
        TxClient *c = self->head;
        queue_remove(self, c);
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
    int rc = lane_give(self, s);
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
    TxServer *s = idle_take_at(self, self->idle_len - 1);
    server_leave(s);
    return (PyObject *)s;
}

/* remove(server): a parked server out of the lane; False when it is not parked here. */
static PyObject *
txlane_remove(TxLane *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &TxServerType))
        Py_RETURN_FALSE;
    Py_ssize_t i = idle_find(self, (TxServer *)arg);
    if (i < 0)
        Py_RETURN_FALSE;
    TxServer *s = idle_take_at(self, i);
    server_leave(s);
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
        queue_remove(self, c);
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
    queue_remove(self, c);
    int rc = client_miss_kept(c);
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
