/* pgpool_tw._speedups: the Relay type, one session's two sockets (see _speedups.c). */
#include "_speedups.h"

double
monotonic_s(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* What a warm relay gets besides an ordinary relay's fields (see _lane.c). */
typedef struct {
    PyObject *lane, *stack, *connection, *reply, *reset;
    int reset_count;
    long uses_left;
    unsigned long pid;
    Py_ssize_t secret_at;
} WarmArgs;

static int
warm_args_valid(const WarmArgs *w, int client_fd, int server_fd)
{
    if (w->lane == NULL) {
        if (client_fd >= 0 && server_fd >= 0)
            return 1;
        PyErr_SetString(PyExc_ValueError, "a relay needs two open sockets");
        return 0;
    }
    if (client_fd == -1 && server_fd >= 0 && w->stack != NULL && w->connection != NULL &&
        w->reply != NULL && w->reset != NULL && w->reset_count >= 0 && w->secret_at >= 0 &&
        w->secret_at <= PyBytes_GET_SIZE(w->reply) - 4)
        return 1;
    PyErr_SetString(PyExc_ValueError,
                    "a warm relay needs a server socket, a stack, the connection, "
                    "its login's end with the secret's offset in it, its reset, "
                    "and no client yet");
    return 0;
}

/* The warm fields; the login's end is copied, so C may write each secret into it. */
static int
relay_set_warm(Relay *self, const WarmArgs *w)
{
    if (w->reply != NULL) {
        Py_ssize_t n = PyBytes_GET_SIZE(w->reply);
        unsigned char *login = PyMem_Malloc(n > 0 ? (size_t)n : 1);
        if (login == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(login, PyBytes_AS_STRING(w->reply), (size_t)n);
        PyMem_Free(self->login);
        self->login = login;
        self->login_len = n;
        self->secret_at = w->secret_at;
    }
    Py_XINCREF(w->lane);
    Py_XSETREF(self->lane, (struct Lane *)w->lane);
    Py_XINCREF(w->stack);
    Py_XSETREF(self->stack, w->stack);
    Py_XINCREF(w->connection);
    Py_XSETREF(self->server, w->connection);
    Py_XINCREF(w->reset);
    Py_XSETREF(self->reset, w->reset);
    self->reset_count = w->reset_count;
    self->uses_left = w->uses_left;
    self->uses = 0;
    self->wstate = W_PARKED;
    self->pid = (uint32_t)w->pid;
    self->secret = 0;
    self->parked_at = monotonic_s();
    reset_start(&self->answer, 0);
    return 0;
}

static int
relay_init(Relay *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tracker", "client",      "server",    "client_fd",
                             "server_fd", "on_terminate", "writes",  "lane",
                             "stack",   "connection",  "reply",     "reset",
                             "reset_count", "uses_left", "pid",     "secret_at", NULL};
    PyObject *tracker, *client, *server, *on_terminate, *writes;
    WarmArgs w = {NULL, NULL, NULL, NULL, NULL, 0, -1, 0, -1};
    int client_fd, server_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOiiOO!|O!O!OSSilkn", kwlist, &TrackerType,
                                     &tracker, &client, &server, &client_fd, &server_fd,
                                     &on_terminate, &PySet_Type, &writes, &LaneType, &w.lane,
                                     &PyList_Type, &w.stack, &w.connection, &w.reply, &w.reset,
                                     &w.reset_count, &w.uses_left, &w.pid, &w.secret_at))
        return -1;
    if (!warm_args_valid(&w, client_fd, server_fd))
        return -1;
    Py_INCREF(tracker);
    Py_XSETREF(self->tracker, (Tracker *)tracker);
    Py_INCREF(client);
    Py_XSETREF(self->transports[0], client);
    Py_INCREF(server);
    Py_XSETREF(self->transports[1], server);
    for (int i = 0; i < 2; i++) {
        PyObject *fd = PyLong_FromLong(i == 0 ? client_fd : server_fd);
        if (fd == NULL)
            return -1;
        Py_XSETREF(self->fd_objs[i], fd);
    }
    Py_INCREF(writes);
    Py_XSETREF(self->writes, writes);
    Py_INCREF(on_terminate);
    Py_XSETREF(self->on_terminate, on_terminate);
    self->fds[0] = client_fd;
    self->fds[1] = server_fd;
    self->received = 0;
    return relay_set_warm(self, &w);
}

static int
relay_traverse(Relay *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tracker);
    Py_VISIT(self->transports[0]);
    Py_VISIT(self->transports[1]);
    Py_VISIT(self->writes);
    Py_VISIT(self->on_terminate);
    Py_VISIT(self->lane);
    Py_VISIT(self->stack);
    Py_VISIT(self->server);
    return 0;
}

static int
relay_clear(Relay *self)
{
    Py_CLEAR(self->tracker);
    Py_CLEAR(self->transports[0]);
    Py_CLEAR(self->transports[1]);
    Py_CLEAR(self->fd_objs[0]);
    Py_CLEAR(self->fd_objs[1]);
    Py_CLEAR(self->writes);
    Py_CLEAR(self->on_terminate);
    Py_CLEAR(self->lane);
    Py_CLEAR(self->stack);
    Py_CLEAR(self->server);
    Py_CLEAR(self->reset);
    return 0;
}

static void
relay_dealloc(Relay *self)
{
    PyObject_GC_UnTrack(self);
    relay_clear(self);
    PyMem_Free(self->answer.buf);
    PyMem_Free(self->login);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
relay_get_received(Relay *self, void *closure)
{
    return PyLong_FromLong(self->received);
}

static PyObject *
relay_get_fds(Relay *self, void *closure)
{
    return Py_BuildValue("(ii)", self->fds[0], self->fds[1]);
}

static PyObject *
relay_get_state(Relay *self, void *closure)
{
    return PyLong_FromLong(self->wstate);
}

static PyObject *
relay_get_uses(Relay *self, void *closure)
{
    return PyLong_FromLong(self->uses);
}

static PyObject *
relay_get_parked_at(Relay *self, void *closure)
{
    return PyFloat_FromDouble(self->parked_at);
}

static PyObject *
relay_get_secret(Relay *self, void *closure)
{
    return PyLong_FromLong((long)(int32_t)self->secret);
}

PyObject *
relay_get_object(PyObject *value)
{
    PyObject *result = value != NULL ? value : Py_None;
    Py_INCREF(result);
    return result;
}

static PyObject *
relay_get_connection(Relay *self, void *closure)
{
    return relay_get_object(self->server);
}

static PyObject *
relay_get_tracker(Relay *self, void *closure)
{
    return relay_get_object((PyObject *)self->tracker);
}

static PyGetSetDef relay_getset[] = {
    {"received", (getter)relay_get_received, NULL,
     "Client chunks forwarded by the C loop.", NULL},
    {"fds", (getter)relay_get_fds, NULL, "(client fd, server fd)", NULL},
    {"state", (getter)relay_get_state, NULL, "A warm relay's state (W_PARKED...).", NULL},
    {"uses", (getter)relay_get_uses, NULL, "Sessions a warm relay started.", NULL},
    {"parked_at", (getter)relay_get_parked_at, NULL,
     "When a warm relay last parked (time.monotonic's clock).", NULL},
    {"secret", (getter)relay_get_secret, NULL,
     "The cancel key of a warm relay's current client.", NULL},
    {"connection", (getter)relay_get_connection, NULL,
     "A warm relay's server connection.", NULL},
    {"tracker", (getter)relay_get_tracker, NULL, "The session tracker.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};


static PyMethodDef relay_methods[] = {
    {"promote", (PyCFunction)relay_promote, METH_NOARGS,
     "Hand an active warm session's client socket to Python (on_event PROMOTE)."},
    {"drop", (PyCFunction)relay_drop, METH_O,
     "drop(last_words): Python takes the server back; an active session's client gets "
     "the last words and is closed."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.Relay",
    .tp_doc = "One attached session's two sockets, forwarded by poll() while registered.",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)relay_init,
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_traverse = (traverseproc)relay_traverse,
    .tp_clear = (inquiry)relay_clear,
    .tp_getset = relay_getset,
    .tp_methods = relay_methods,
};
