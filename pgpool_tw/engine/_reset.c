/* pgpool_tw._speedups: the reset's answer, read by the warm lane (see _warm.c). */
#include "_speedups.h"

/*
 * "The reset's answer": what the server sends back for the pooler's own batch
 * of simple queries (reset_query_list after a session, SET application_name).
 * The same rule, with the same outcome for any cutting of the same bytes, is
 * pgpool_tw/protocol/reset_reply.py's ResetReply, which pool/backend.py's
 * run_batch uses; tests/unit/test_reset_reply.py feeds both the same random
 * streams cut at random points.
 *
 * - Whole messages are read (5-byte header; a length under 4 or over
 *   RESET_REPLY_MAX: FAILED at once, the stream cannot be trusted).
 * - ErrorResponse: the batch failed; reading goes on to the last ReadyForQuery.
 * - CopyInResponse, CopyOutResponse, CopyBothResponse: FAILED at once (a reset
 *   query never starts COPY; whoever owns the connection closes it).
 * - ParameterStatus: the parameter is recorded (malformed ones are ignored).
 * - ReadyForQuery: its status is recorded (idle when the body is empty) and
 *   one fewer is owed.  At the last one owed: CLEAN when no query failed, the
 *   status is idle and nothing followed it in what was received; else FAILED.
 * - Anything else (CommandComplete, NoticeResponse...) is skipped.
 * After a verdict the bytes fed are ignored and the verdict is repeated.
 * FAILED always means "not reusable": the pool discards the connection.
 */

void
reset_start(ResetState *s, int owed)
{
    s->owed = owed;
    s->ok = 1;
    s->verdict = RESET_MORE;
    s->len = 0;
}

static int
reset_finish(ResetState *s, int verdict)
{
    s->verdict = verdict;
    s->len = 0;
    return verdict;
}

/* One whole message; returns RESET_MORE, a verdict, or -1 on a Python error. */
static int
reset_message(ResetState *s, Tracker *t, const unsigned char *p, int64_t length)
{
    int kind = p[0];
    if (kind == 'E') {
        s->ok = 0;
    } else if (kind == 'G' || kind == 'H' || kind == 'W') {
        return reset_finish(s, RESET_FAILED);
    } else if (kind == S_PARAMETER_STATUS) {
        if (parameter_status(t, p + 5, (Py_ssize_t)length - 4) < 0)
            return -1;
    } else if (kind == S_READY) {
        t->status = length > 4 ? p[5] : IDLE;
        s->owed--;
    }
    return RESET_MORE;
}

int
reset_feed(ResetState *s, Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    if (s->verdict != RESET_MORE)
        return s->verdict;
    if (buffer_append(&s->buf, &s->len, &s->cap, data, n) < 0)
        return -1;
    Py_ssize_t pos = 0;
    while (s->len - pos >= 5) {
        const unsigned char *p = s->buf + pos;
        int64_t length = length_at(p + 1);
        if (length < 4 || length > RESET_REPLY_MAX)
            return reset_finish(s, RESET_FAILED);
        if (pos + 1 + length > s->len)
            break;
        int rc = reset_message(s, t, p, length);
        if (rc != RESET_MORE)
            return rc;
        pos += 1 + length;
        if (s->owed == 0) {
            int clean = s->ok && t->status == IDLE && pos == s->len;
            return reset_finish(s, clean ? RESET_CLEAN : RESET_FAILED);
        }
    }
    if (pos) {
        memmove(s->buf, s->buf + pos, (size_t)(s->len - pos));
        s->len -= pos;
    }
    return RESET_MORE;
}

/* ------------------------------------------------------------------------- */
/* ResetReply: the same reader, for Python (tests compare it with Python's)   */
/* ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Tracker *tracker; /* its status and params are what the answer changed */
    ResetState state;
} ResetReply;

static int
reply_init(ResetReply *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"tracker", "owed", NULL};
    PyObject *tracker;
    int owed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!i", kwlist, &TrackerType, &tracker, &owed))
        return -1;
    if (owed < 1) {
        PyErr_SetString(PyExc_ValueError, "at least one ReadyForQuery must be owed");
        return -1;
    }
    Py_INCREF(tracker);
    Py_XSETREF(self->tracker, (Tracker *)tracker);
    reset_start(&self->state, owed);
    return 0;
}

static int
reply_traverse(ResetReply *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tracker);
    return 0;
}

static int
reply_clear(ResetReply *self)
{
    Py_CLEAR(self->tracker);
    return 0;
}

static void
reply_dealloc(ResetReply *self)
{
    PyObject_GC_UnTrack(self);
    reply_clear(self);
    PyMem_Free(self->state.buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
reply_feed(ResetReply *self, PyObject *arg)
{
    if (self->tracker == NULL) {
        PyErr_SetString(PyExc_ValueError, "the reply was never initialised");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = reset_feed(&self->state, self->tracker, view.buf, view.len);
    PyBuffer_Release(&view);
    return rc < 0 ? NULL : PyLong_FromLong(rc);
}

static PyMethodDef reply_methods[] = {
    {"feed", (PyCFunction)reply_feed, METH_O,
     "feed(data) -> 0 (more owed), 1 (clean) or 2 (failed); the tracker gets status and params."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ResetReplyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pgpool_tw.engine._speedups.ResetReply",
    .tp_doc = "The warm lane's reader of a reset's answer (see _reset.c).",
    .tp_basicsize = sizeof(ResetReply),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reply_init,
    .tp_dealloc = (destructor)reply_dealloc,
    .tp_traverse = (traverseproc)reply_traverse,
    .tp_clear = (inquiry)reply_clear,
    .tp_methods = reply_methods,
};
