/* pgpool_tw._speedups: SendNow, net/transport.py's send-now writer in C (see engine/writer.py). */
#include "_speedups.h"

/*
 * A `write` that sends at once when Twisted has nothing queued for the socket,
 * by the rule the C relay follows (clear_to_send in _slots.c): the socket's fd
 * is not in the epoll reactor's write set.  Twisted's write() and
 * loseConnection() put it there and only its doWrite, once everything went
 * out, takes it out.  What the kernel does not take, every write while
 * something is queued, and every write after the socket closed go to
 * transport.write, so order, flow control and errors stay Twisted's.
 *
 * The fd is read from the socket object at each call: once Twisted closed it,
 * fileno() is -1, so a number the kernel has since given to another connection
 * is never written to.
 */

typedef struct {
    PyObject_HEAD
    PyObject *transport;
    PyObject *socket;
    PyObject *writes; /* the epoll reactor's set of fds it waits to write to */
} SendNow;

static PyObject *str_fileno;

static int
writer_init(SendNow *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"transport", "socket", "writes", NULL};
    PyObject *transport, *sock, *writes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!", kwlist, &transport, &sock, &PySet_Type,
                                     &writes))
        return -1;
    if (str_fileno == NULL && (str_fileno = PyUnicode_InternFromString("fileno")) == NULL)
        return -1;
    Py_INCREF(transport);
    Py_XSETREF(self->transport, transport);
    Py_INCREF(sock);
    Py_XSETREF(self->socket, sock);
    Py_INCREF(writes);
    Py_XSETREF(self->writes, writes);
    return 0;
}

/* Queue it in Twisted: the slow path keeps order. */
static PyObject *
writer_queue(SendNow *self, PyObject *data)
{
    return PyObject_CallMethodObjArgs(self->transport, str_write, data, NULL);
}

static PyObject *
writer_call(SendNow *self, PyObject *args, PyObject *kwds)
{
    PyObject *data;
    if (self->transport == NULL || !PyArg_ParseTuple(args, "O", &data)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "the writer was never initialised");
        return NULL;
    }
    if (!PyBytes_Check(data))
        return writer_queue(self, data); /* Twisted says what it thinks of it */
    PyObject *fd_obj = PyObject_CallMethodNoArgs(self->socket, str_fileno);
    if (fd_obj == NULL)
        return NULL;
    long fd = PyLong_AsLong(fd_obj);
    int busy = fd < 0 ? 1 : PySet_Contains(self->writes, fd_obj);
    Py_DECREF(fd_obj);
    if (busy < 0)
        return NULL;
    if (busy)
        return writer_queue(self, data);
    if (send_now((int)fd, self->transport, (const unsigned char *)PyBytes_AS_STRING(data),
                 PyBytes_GET_SIZE(data)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int
writer_traverse(SendNow *self, visitproc visit, void *arg)
{
    Py_VISIT(self->transport);
    Py_VISIT(self->socket);
    Py_VISIT(self->writes);
    return 0;
}

static int
writer_clear(SendNow *self)
{
    Py_CLEAR(self->transport);
    Py_CLEAR(self->socket);
    Py_CLEAR(self->writes);
    return 0;
}

static void
writer_dealloc(SendNow *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyTypeObject SendNowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.SendNow",
    .tp_doc = "SendNow(transport, socket, writes)(data): send now unless Twisted has bytes "
              "queued (see _writer.c).",
    .tp_basicsize = sizeof(SendNow),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_call = (ternaryfunc)writer_call,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
};
