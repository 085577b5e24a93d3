/* pgpool_tw._speedups: the slot table (what poll() does with each fd) and sending now. */
#include "_speedups.h"

Slot *slots = NULL;
int slots_size = 0;
unsigned char recv_buffer[RECV_SIZE];
/* Set when a pump ran Python code, which may have scheduled work for Twisted. */
int ran_python = 0;

PyObject *str_write; /* "write", interned at import */

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
    Py_XDECREF((PyObject *)old.router);
    Py_XDECREF((PyObject *)old.lane);
    Py_XDECREF(old.tx);
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

PyObject *
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

PyObject *
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
    return send_queued(transport, data + sent, n - sent);
}

/* Hand the bytes to Twisted's write(): they go behind whatever it holds. */
int
send_queued(PyObject *transport, const unsigned char *data, Py_ssize_t n)
{
    ran_python = 1;
    PyObject *chunk = PyBytes_FromStringAndSize((const char *)data, n);
    if (chunk == NULL)
        return -1;
    PyObject *res = PyObject_CallMethodObjArgs(transport, str_write, chunk, NULL);
    Py_DECREF(chunk);
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

/*
 * A client chunk in recv_buffer, sent on up to where the walk stopped (a Terminate,
 * or a watched Query: the tracker's `local`): that offset, -1 for none, -2 on error.
 */
Py_ssize_t
forward_client(Relay *r, ssize_t n)
{
    r->received++;
    Py_ssize_t at = feed_client_raw(r->tracker, recv_buffer, n);
    if (send_now(r->fds[1], r->transports[1], recv_buffer, at < 0 ? n : at) < 0)
        return -2;
    return at;
}
