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

int
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

void
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
TxServer *
tx_idle_take_at(TxLane *lane, Py_ssize_t i)
{
    TxServer *s = lane->idle[i];
    memmove(lane->idle + i, lane->idle + i + 1, sizeof(TxServer *) * (size_t)(lane->idle_len - i - 1));
    lane->idle_len--;
    return s;
}

Py_ssize_t
tx_idle_find(TxLane *lane, TxServer *s)
{
    for (Py_ssize_t i = lane->idle_len - 1; i >= 0; i--)
        if (lane->idle[i] == s)
            return i;
    return -1;
}

/* A server leaves the lane: Twisted reads its socket from now on. */
void
tx_server_leave(TxServer *s)
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
void
tx_queue_remove(TxLane *lane, TxClient *c)
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
int
tx_client_miss_kept(TxClient *c)
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
    c->bytes_in += n;
    c->sent_at = event_now();
    return tx_send(lane->writes, s->fd, s->fd_obj, s->transport, data, n);
}

/* The transaction is Python's from here (see the top of this file). */
int
tx_adopt(TxClient *c, int64_t raw_left, const unsigned char *rest, Py_ssize_t rest_len)
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
    tx_server_leave(s);
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
    c->bytes_out += at;
    if (tx_send(c->lane->writes, c->fd, c->fd_obj, c->transport, data, at) < 0)
        return -1;
    return tx_adopt(c, 0, data + at, n - at);
}

/* A statement's answer ended: its query time. */
static void
statement_done(TxClient *c)
{
    double took = event_now() - c->sent_at;
    c->lane->query_time += took;
    c->lane->query_hist[log2_bucket(took)]++;
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
    statement_done(c);
    int rc = tx_lane_give(lane, s);
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
    statement_done(c);
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
        return tx_adopt(c, 0, NULL, 0);
    }
    c->owed = 1;
    c->skip = 0;
    c->lane->hits++;
    c->lane->bytes_in += n;
    c->bytes_in += n;
    c->sent_at = event_now();
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
            c->bytes_out += n;
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
    c->bytes_out += n;
    return tx_send(c->lane->writes, c->fd, c->fd_obj, c->transport, data, n);
}

/* -- a free server ------------------------------------------------------------ */

/* `s` is free (the caller keeps its own reference): Python's first waiter, the first
   waiting client here, or the stack. */
int
tx_lane_give(TxLane *lane, TxServer *s)
{
    s->lane = lane;
    s->client = NULL;
    s->parked_at = monotonic_s();
    if (s->retired) {
        tx_server_leave(s);
        ran_python = 1;
        PyObject *res = PyObject_CallFunction(lane->on_event, "iO", EV_TX_RETIRED, (PyObject *)s);
        if (res == NULL)
            return -1;
        Py_DECREF(res);
        return 0;
    }
    TxClient *head = lane->head;
    if (lane->py_first > 0 && (head == NULL || lane->py_first < head->seq)) {
        tx_server_leave(s);
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
    tx_queue_remove(lane, head); /* its reference is ours now */
    if (head->tag == s->tag && head->fd >= 0) {
        double waited = s->parked_at - head->queued_at; /* parked_at: now, set above */
        lane->waited += waited;
        lane->wait_hist[log2_bucket(waited)]++;
    }
    int rc;
    if (head->tag == s->tag && head->fd >= 0) {
        /* Sent from the client's own buffer: no copy per served waiter (a send the
           kernel does not take whole is copied by the transport's write). */
        Py_INCREF(s);
        rc = pair(head, s, head->pend, head->pend_len);
        head->pend_len = 0;
    } else {
        /* Another tag: the server parks, and Python serves the client (its replay). */
        rc = idle_push(lane, s);
        if (rc == 0)
            rc = tx_client_miss_kept(head);
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
            return pair(c, tx_idle_take_at(lane, i), data, n);
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
        tx_queue_remove(c->lane, c);
        c->pend_len = 0;
        Py_DECREF(c);
    }
    c->armed = 0;
    return tx_adopt(c, c->skip, NULL, 0);
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
                return tx_adopt(c, c->skip, NULL, 0) < 0 ? -1 : PUMPED;
            tx_queue_remove(c->lane, c);
            int rc = tx_client_miss_kept(c);
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
        Py_ssize_t i = tx_idle_find(lane, s);
        tx_server_leave(s);
        if (i >= 0) {
            TxServer *taken = tx_idle_take_at(lane, i);
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
        if (tx_adopt(c, c->skip, NULL, 0) < 0)
            return -1;
        return TO_TWISTED;
    }
    /* Twisted still writes to the client: its flow control takes the rest. */
    int busy = PySet_Contains(lane->writes, c->fd_obj);
    if (busy < 0)
        return -1;
    if (busy) {
        if (tx_adopt(c, c->skip, NULL, 0) < 0)
            return -1;
        return TO_TWISTED;
    }
    ssize_t n;
    int got = take_chunk(s->fd, &n);
    if (got == PUMPED)
        return PUMPED;
    if (got != GOT_CHUNK) {
        if (tx_adopt(c, c->skip, NULL, 0) < 0)
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
