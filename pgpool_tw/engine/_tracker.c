/* pgpool_tw._speedups: the session tracker's header walk (the Python type is in _tracker_type.c). */
#include "_speedups.h"

/*
 * The same rules as pgpool_tw.protocol.relay.SessionTracker, for any cutting of
 * the same bytes (tests/unit/test_speedups.py compares both on random streams).
 * Only 5-byte headers are walked; a ReadyForQuery or ParameterStatus body is
 * read, copied only when a chunk boundary cuts it.
 */


/* The server's queue goes busy: its query time starts. */
static inline void
query_sent(Tracker *t)
{
    if (t->pending++ == 0)
        t->busy_since = event_now();
}

/* A ReadyForQuery answered a Query, Sync or FunctionCall. */
static inline void
query_answered(Tracker *t)
{
    t->pending--;
    t->queries++;
    if (t->status == IDLE)
        t->xacts++;
    if (t->pending == 0) {
        double took = event_now() - t->busy_since;
        t->query_time += took;
        t->query_hist[log2_bucket(took)]++;
    }
}

/* One client message's effect; returns 1 for a Terminate. */
static inline int
client_message(Tracker *t, int kind)
{
    if (kind == C_QUERY || kind == C_FUNCTION_CALL) {
        query_sent(t);
    } else if (kind == C_SYNC) {
        query_sent(t);
        t->unsynced = 0;
    } else if (kind == C_TERMINATE) {
        return 1;
    } else if (kind != C_COPY_DATA && kind != C_COPY_DONE && kind != C_COPY_FAIL) {
        t->unsynced = 1;
    }
    return 0;
}

/*
 * The Query at data[pos] (its header whole) starts with a watch word, after ASCII
 * whitespace, or the chunk ends before that is known: the walk stops before it.
 */
static int
watched(Tracker *t, const unsigned char *data, int64_t pos, Py_ssize_t n)
{
    int64_t end = pos + length_at(data + pos + 1); /* its text ends before the NUL */
    int cut = end > n;
    if (cut)
        end = n;
    int64_t at = pos + 5;
    while (at < end && (data[at] == ' ' || (data[at] >= '\t' && data[at] <= '\r')))
        at++;
    if (at >= end)
        return cut;
    for (int w = 0; w < t->nwatch; w++) {
        int size = t->watch_len[w];
        int64_t avail = end - at;
        int64_t upto = avail < size ? avail : size;
        int i = 0;
        while (i < upto && (data[at + i] | 0x20) == t->watch[w][i])
            i++;
        if (i == size || (i == upto && cut))
            return 1;
    }
    return 0;
}

/* Walk a client chunk; the offset of a Terminate or a watched Query in it, or -1. */
Py_ssize_t
feed_client_raw(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    int64_t pos = t->c_skip;
    t->bytes_in += n;
    if (pos >= n) {
        t->c_skip = pos - n;
        return -1;
    }
    if (t->c_head_len) {
        int had = t->c_head_len;
        int take = 5 - had;
        if (take > n)
            take = (int)n;
        memcpy(t->c_head + had, data, (size_t)take);
        if (had + take < 5) {
            t->c_head_len = had + take;
            return -1;
        }
        t->c_head_len = 0;
        if (client_message(t, t->c_head[0])) {
            /* Part of this Terminate already went to the server: not reusable. */
            t->unsynced = 1;
            t->c_skip = 0;
            t->local = 0;
            return 0;
        }
        /* A length under 4 (malformed) is taken as 4: never step back before the header. */
        int64_t length = length_at(t->c_head + 1);
        pos = -had + 1 + (length < 4 ? 4 : length);
    }
    while (pos < n) {
        if (n - pos < 5) {
            t->c_head_len = (int)(n - pos);
            memcpy(t->c_head, data + pos, (size_t)t->c_head_len);
            t->c_skip = 0;
            return -1;
        }
        int kind = data[pos];
        if (kind == C_QUERY && t->nwatch && watched(t, data, pos, n)) {
            t->bytes_in -= n - pos; /* walked again when Python passes it on */
            t->c_skip = 0;
            t->local = 1;
            return (Py_ssize_t)pos;
        }
        if (client_message(t, kind)) {
            t->c_skip = 0;
            t->local = 0;
            return (Py_ssize_t)pos;
        }
        pos += 1 + length_at(data + pos + 1);
    }
    t->c_skip = pos - n;
    return -1;
}

/* Append to a growing PyMem buffer (doubling from 64 bytes); -1 on no memory. */
int
buffer_append(unsigned char **buf, Py_ssize_t *len, Py_ssize_t *cap, const unsigned char *data,
              Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    if (*len + n > *cap) {
        Py_ssize_t size = *cap ? *cap : 64;
        while (size < *len + n)
            size *= 2;
        unsigned char *grown = PyMem_Realloc(*buf, (size_t)size);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *buf = grown;
        *cap = size;
    }
    memcpy(*buf + *len, data, (size_t)n);
    *len += n;
    return 0;
}

static int
body_append(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    return buffer_append(&t->s_body, &t->s_body_len, &t->s_body_cap, data, n);
}

/* A ParameterStatus body: name\0value\0.  Malformed ones are ignored, as in Python. */
int
parameter_status(Tracker *t, const unsigned char *body, Py_ssize_t n)
{
    if (n < 1 || body[n - 1] != 0)
        return 0;
    const unsigned char *first = memchr(body, 0, (size_t)n);
    Py_ssize_t name_len = first - body;
    if (name_len + 1 >= n) /* one string only */
        return 0;
    const unsigned char *value = first + 1;
    Py_ssize_t value_len = n - 1 - (name_len + 1);
    if (memchr(value, 0, (size_t)value_len) != NULL) /* three or more strings */
        return 0;
    PyObject *name = PyUnicode_DecodeUTF8((const char *)body, name_len, "surrogateescape");
    if (name == NULL)
        return -1;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)value, value_len, "surrogateescape");
    if (text == NULL) {
        Py_DECREF(name);
        return -1;
    }
    int rc = PyDict_SetItem(t->params, name, text);
    Py_DECREF(name);
    Py_DECREF(text);
    t->changed++;
    return rc;
}

static int
server_body(Tracker *t, int kind, const unsigned char *body, Py_ssize_t n)
{
    if (kind == S_READY) {
        if (n > 0)
            t->status = body[0];
        if (t->pending)
            query_answered(t);
        return 0;
    }
    return parameter_status(t, body, n);
}

/*
 * A header found in `head` at `at` whose body starts at `body_start` of `data`
 * (negative when the header began in an earlier chunk).  Sets *end to where the
 * message ends in `data`; returns -1 on a Python error.
 */
static int
server_header(Tracker *t, const unsigned char *data, Py_ssize_t n, const unsigned char *head,
              int64_t body_start, int64_t *end)
{
    int kind = head[0];
    int64_t length = length_at(head + 1);
    int64_t stop = body_start - 4 + (length < 4 ? 4 : length); /* as in feed_client_raw */
    if (kind != S_READY && kind != S_PARAMETER_STATUS) {
        *end = stop;
        return 0;
    }
    int64_t from = body_start < 0 ? 0 : body_start;
    if (stop > n) {
        t->s_type = kind;
        t->s_body_len = 0;
        if (body_append(t, data + from, n - from) < 0)
            return -1;
        t->s_need = stop - n;
        *end = n;
        return 0;
    }
    *end = stop;
    return server_body(t, kind, data + from, stop > from ? stop - from : 0);
}

/*
 * Carry on from the previous server chunk: a body still owed, bytes to skip,
 * or a header it cut.  Sets *pos to where the walk goes on in `data`; returns
 * 1 to walk on, 0 when the chunk is used up, -1 on a Python error.
 */
static int
server_resume(Tracker *t, const unsigned char *data, Py_ssize_t n, int64_t *pos)
{
    if (t->s_need) {
        int64_t need = t->s_need;
        if (body_append(t, data, n < need ? n : need) < 0)
            return -1;
        if (n < need) {
            t->s_need = need - n;
            return 0;
        }
        t->s_need = 0;
        int rc = server_body(t, t->s_type, t->s_body, t->s_body_len);
        t->s_body_len = 0;
        *pos = need;
        return rc < 0 ? -1 : 1;
    }
    if (*pos >= n) {
        t->s_skip = *pos - n;
        return 0;
    }
    if (t->s_head_len) {
        int had = t->s_head_len;
        int take = 5 - had;
        if (take > n)
            take = (int)n;
        memcpy(t->s_head + had, data, (size_t)take);
        if (had + take < 5) {
            t->s_head_len = had + take;
            return 0;
        }
        t->s_head_len = 0;
        return server_header(t, data, n, t->s_head, -had + 5, pos) < 0 ? -1 : 1;
    }
    return 1;
}

/* Walk a server chunk; -1 on a Python error (only from the params dict). */
int
feed_server_raw(Tracker *t, const unsigned char *data, Py_ssize_t n)
{
    int64_t pos = t->s_skip;
    int64_t end;
    t->bytes_out += n;
    int go_on = server_resume(t, data, n, &pos);
    if (go_on <= 0)
        return go_on;
    while (pos < n) {
        if (n - pos < 5) {
            t->s_head_len = (int)(n - pos);
            memcpy(t->s_head, data + pos, (size_t)t->s_head_len);
            t->s_skip = 0;
            return 0;
        }
        int kind = data[pos];
        end = pos + 1 + length_at(data + pos + 1);
        if (kind == S_READY && end <= n) {
            if (end > pos + 5)
                t->status = data[pos + 5];
            if (t->pending)
                query_answered(t);
        } else if (kind == S_READY || kind == S_PARAMETER_STATUS) {
            if (server_header(t, data, n, data + pos, pos + 5, &end) < 0)
                return -1;
            if (t->s_need)
                return 0;
        }
        pos = end;
    }
    t->s_skip = pos - n;
    return 0;
}

int
tracker_in_sync_c(Tracker *t)
{
    return t->pending == 0 && !t->unsynced && !t->c_skip && !t->c_head_len && !t->s_skip &&
           !t->s_head_len && !t->s_need;
}
