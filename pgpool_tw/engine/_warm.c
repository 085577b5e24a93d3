/* pgpool_tw._speedups: the sessions of warm logins, from login to park (see _lane.c). */
#include "_speedups.h"

/*
 * A warm relay is a pooled server connection Python lent to a Lane.  Once the
 * lane logged a client in on it (_lane.c), its events come here: the session
 * is relayed like any other; a clean Terminate sends the reset queries and
 * parks the relay again once they all answered without an error; every other
 * end goes back to Python through on_event, and a client that cannot take a
 * send, or whose server has bytes queued in Twisted, is promoted to Python.
 */

/* Tell Python: on_event(kind, relay, data). */
int
lane_call(Lane *lane, int kind, PyObject *relay, PyObject *data)
{
    ran_python = 1;
    PyObject *res = PyObject_CallFunction(lane->on_event, "iOO", kind,
                                          relay != NULL ? relay : Py_None,
                                          data != NULL ? data : Py_None);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/*
 * A session record for observers, only while Python set `log` to a list: a
 * warm login (NOTE_STARTED, with the client's address bytes and port) or the
 * end of a warm session (NOTE_ENDED).  Python drains the list on its tick, so
 * a session costs nothing extra while nobody watches.  A record that cannot be
 * made (no memory) is reported and lost: it never breaks the session.
 */
void
lane_note(Lane *lane, int kind, Relay *r, const unsigned char *addr, int addr_len, int port)
{
    if (lane->log == NULL)
        return;
    PyObject *record = Py_BuildValue("(iOy#i)", kind, (PyObject *)r,
                                     addr != NULL ? (const char *)addr : "",
                                     (Py_ssize_t)(addr != NULL ? addr_len : 0), port);
    if (record == NULL || PyList_Append(lane->log, record) < 0)
        PyErr_WriteUnraisable((PyObject *)lane);
    Py_XDECREF(record);
}

/* The client's socket is closed; the session counts no more. */
static int
warm_client_closed(Relay *r)
{
    Lane *lane = r->lane;
    int fd = r->fds[0];
    r->fds[0] = -1;
    if (fd >= 0) {
        slot_clear(fd);
        close(fd);
    }
    lane->active--;
    lane->free++; /* its client slot */
    lane_note(lane, NOTE_ENDED, r, NULL, 0, 0);
    return lane->wake ? lane_call(lane, EV_LEFT, NULL, NULL) : 0;
}

/* The server connection goes back to Python; the pool decides its fate. */
static int
warm_return(Relay *r, int kind, PyObject *data)
{
    slot_clear_server(r);
    r->wstate = W_RETURNED;
    return lane_call(r->lane, kind, (PyObject *)r, data);
}

static int
warm_park(Relay *r)
{
    if (r->lane->closing)
        return warm_return(r, EV_RESET, Py_True); /* a shutdown: the pool decides */
    slot_clear_server(r); /* parked: Twisted watches the server again */
    r->wstate = W_PARKED;
    r->parked_at = monotonic_s();
    return PyList_Append(r->stack, (PyObject *)r);
}

/* The client went away without a Terminate. */
static int
warm_gone(Relay *r)
{
    int rc = warm_client_closed(r);
    if (warm_return(r, EV_ENDED, Py_False) < 0)
        rc = -1;
    return rc;
}

/* Python carries the session on: it gets the client's socket, what the client is owed
   (rest) and what it sent that was not forwarded (unsent). */
static int
warm_promote(Relay *r, const unsigned char *rest, Py_ssize_t n, const unsigned char *unsent,
             Py_ssize_t unsent_n)
{
    Lane *lane = r->lane;
    int fd = r->fds[0];
    struct epoll_event unused = {0};
    epoll_ctl(lane->epfd, EPOLL_CTL_DEL, fd, &unused);
    slot_clear(fd);
    slot_clear_server(r);
    r->fds[0] = -1;
    r->wstate = W_RETURNED;
    lane->active--;
    lane->free++; /* its client slot */
    lane_note(lane, NOTE_ENDED, r, NULL, 0, 0);
    PyObject *data = Py_BuildValue("(iy#y#)", fd, rest != NULL ? (const char *)rest : "", n,
                                   unsent != NULL ? (const char *)unsent : "", unsent_n);
    if (data == NULL)
        return -1;
    int rc = lane_call(lane, EV_PROMOTE, (PyObject *)r, data);
    Py_DECREF(data);
    return rc;
}

/* Send to the warm client; what the kernel does not take promotes the session. */
int
warm_send_client(Relay *r, const unsigned char *data, Py_ssize_t n)
{
    ssize_t sent = send(r->fds[0], data, (size_t)n, MSG_NOSIGNAL);
    if (sent == n)
        return 0;
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return warm_gone(r);
        sent = 0;
    }
    return warm_promote(r, data + sent, n - sent, NULL, 0);
}

/* The client's Terminate: reset and park, or let the pool decide. */
static int
warm_ended(Relay *r)
{
    Tracker *t = r->tracker;
    int reusable = tracker_in_sync_c(t) && t->status == IDLE && !t->changed &&
                   r->uses_left != 0 && !r->lane->closing;
    int rc = warm_client_closed(r);
    if (!reusable) {
        if (warm_return(r, EV_ENDED, Py_True) < 0)
            rc = -1;
        return rc;
    }
    if (r->reset_count == 0)
        return warm_park(r) < 0 ? -1 : rc;
    r->wstate = W_RESETTING;
    reset_start(&r->answer, r->reset_count);
    if (send_now(r->fds[1], r->transports[1], (const unsigned char *)PyBytes_AS_STRING(r->reset),
                 PyBytes_GET_SIZE(r->reset)) < 0)
        rc = -1;
    return rc;
}

/*
 * The reset's answer (the rule is _reset.c's, shared with Python's run_batch):
 * clean, and no parameter changed during the session or the reset, parks the
 * relay again; anything else goes back to the pool.
 */
static int
warm_reset_reply(Relay *r, const unsigned char *data, Py_ssize_t n)
{
    int verdict = reset_feed(&r->answer, r->tracker, data, n);
    if (verdict < 0)
        return -1;
    if (verdict == RESET_MORE)
        return 0;
    if (verdict == RESET_CLEAN && !r->tracker->changed)
        return warm_park(r);
    return warm_return(r, EV_RESET, verdict == RESET_CLEAN ? Py_True : Py_False);
}

/* One event of a warm relay's socket.  -1 on a Python error. */
int
warm_event(Relay *r, int side, unsigned int ev)
{
    if (side == SIDE_CLIENT) {
        if (r->wstate != W_ACTIVE)
            return PUMPED;
        if (!(ev & EPOLLIN))
            return warm_gone(r) < 0 ? -1 : PUMPED;
        int clear = clear_to_send(r, 1);
        if (clear <= 0)
            return clear < 0 || warm_promote(r, NULL, 0, NULL, 0) < 0 ? -1 : PUMPED;
        ssize_t n = recv_chunk(r->fds[0]);
        if (n == AGAIN)
            return PUMPED;
        if (n <= 0)
            return warm_gone(r) < 0 ? -1 : PUMPED;
        Py_ssize_t at = forward_client(r, n);
        if (at >= 0 && r->tracker->local) /* Python decides: the session becomes its own */
            return warm_promote(r, NULL, 0, recv_buffer + at, n - at) < 0 ? -1 : PUMPED;
        if (at >= 0)
            return warm_ended(r) < 0 ? -1 : PUMPED;
        return at == -2 ? -1 : PUMPED;
    }
    if (ev != EPOLLIN)
        return TO_TWISTED; /* the server's hang-up or error: its protocol reports it */
    ssize_t n = recv_chunk(r->fds[1]);
    if (n == AGAIN)
        return PUMPED;
    if (n < 0)
        return TO_TWISTED_ERROR;
    if (n == 0)
        return TO_TWISTED;
    if (r->wstate == W_RESETTING)
        return warm_reset_reply(r, recv_buffer, n) < 0 ? -1 : PUMPED;
    int rc = feed_server_raw(r->tracker, recv_buffer, n);
    if (warm_send_client(r, recv_buffer, n) < 0 || rc < 0)
        return -1;
    return PUMPED;
}

PyObject *
relay_promote(Relay *self, PyObject *unused)
{
    if (self->lane == NULL || self->wstate != W_ACTIVE) {
        PyErr_SetString(PyExc_ValueError, "only an active warm relay can be promoted");
        return NULL;
    }
    if (warm_promote(self, NULL, 0, NULL, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyObject *
relay_drop(Relay *self, PyObject *arg)
{
    if (self->lane == NULL) {
        PyErr_SetString(PyExc_ValueError, "only a warm relay can be dropped");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int active = self->wstate == W_ACTIVE;
    if (active && view.len > 0) /* last words, if the kernel takes them */
        (void)send(self->fds[0], view.buf, (size_t)view.len, MSG_NOSIGNAL);
    PyBuffer_Release(&view);
    slot_clear_server(self);
    self->wstate = W_RETURNED;
    reset_start(&self->answer, 0);
    if (active && warm_client_closed(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}
