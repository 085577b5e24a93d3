/* pgpool_tw._speedups: a warm login, from accept to the login's end (the Lane type is _lane.c). */
#include "_speedups.h"

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
void
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
    PyObject *args = Py_BuildValue("(iiy#id)", fd, p->listen_fd, (const char *)p->buf,
                                   (Py_ssize_t)p->len, p->answered, p->accepted_at);
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
 * The end of the login: Python's bytes (lane/warm.py builds them with
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
        if (lane->pending_cap > 0 && lane->pending >= lane->pending_cap)
            lane_shed_oldest(lane);
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
        p->accepted_at = monotonic_s();
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
