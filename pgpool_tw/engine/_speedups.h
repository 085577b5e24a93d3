/*
 * Declarations shared by the C files of pgpool_tw._speedups (see _speedups.c).
 */
#ifndef PGPOOL_TW_SPEEDUPS_H
#define PGPOOL_TW_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define IDLE 'I'
#define RECV_SIZE 65536

/* Client message types. */
#define C_QUERY 'Q'
#define C_SYNC 'S'
#define C_FUNCTION_CALL 'F'
#define C_TERMINATE 'X'
#define C_COPY_DATA 'd'
#define C_COPY_DONE 'c'
#define C_COPY_FAIL 'f'
/* Server message types the tracker reads the body of. */
#define S_READY 'Z'
#define S_PARAMETER_STATUS 'S'

static inline int64_t
length_at(const unsigned char *p)
{
    return ((int64_t)p[0] << 24) | ((int64_t)p[1] << 16) | ((int64_t)p[2] << 8) | (int64_t)p[3];
}

/* -- the session tracker (_tracker.c: the walk; _tracker_type.c: the Python type) -- */

enum { WATCH_MAX = 4, WATCH_WORD_MAX = 16 };

/*
 * Durations by log2 bucket of their microseconds (stats/counters.py's log2_bucket is the
 * same rule): bucket 0 holds under 1 us, bucket k [2^(k-1), 2^k) us, the last the rest.
 */
enum { HIST_BUCKETS = 32 };

static inline int
log2_bucket(double seconds)
{
    long long us = (long long)(seconds * 1e6);
    if (us <= 0)
        return 0;
    int k = 64 - __builtin_clzll((unsigned long long)us);
    return k < HIST_BUCKETS ? k : HIST_BUCKETS - 1;
}

typedef struct {
    PyObject_HEAD
    long pending;
    int unsynced;
    int status;
    PyObject *params; /* dict, shared with the server connection */
    int64_t c_skip;
    unsigned char c_head[5];
    int c_head_len;
    int64_t s_skip;
    unsigned char s_head[5];
    int s_head_len;
    int s_type;
    unsigned char *s_body;
    Py_ssize_t s_body_len;
    Py_ssize_t s_body_cap;
    int64_t s_need;
    long changed; /* ParameterStatus messages recorded (a warm login's reply is stale) */
    /* Counters for the stats snapshot: plain adds in the header walk, taken by
       take_counts() when Python harvests them (a session's end, a snapshot). */
    long long queries;   /* ReadyForQuery answering a Query, Sync or FunctionCall */
    long long xacts;     /* those of them reporting idle: a transaction ended */
    long long bytes_in;  /* client bytes walked */
    long long bytes_out; /* server bytes walked */
    /* Python's watch words (lower case): a Query whose text starts with one stops the
       client walk before it, `local` set (protocol/relay.py's LOCAL_WORDS). */
    unsigned char watch[WATCH_MAX][WATCH_WORD_MAX];
    unsigned char watch_len[WATCH_MAX];
    int nwatch;
    int local;
    /* Query time (PgBouncer's): from the moment the server's queue of Query, Sync and
       FunctionCall messages goes from empty to busy until it is empty again. */
    double busy_since;
    double query_time;
    long long query_hist[HIST_BUCKETS];
} Tracker;

extern PyTypeObject TrackerType;
Py_ssize_t feed_client_raw(Tracker *t, const unsigned char *data, Py_ssize_t n);
int feed_server_raw(Tracker *t, const unsigned char *data, Py_ssize_t n);
int parameter_status(Tracker *t, const unsigned char *body, Py_ssize_t n);
int tracker_in_sync_c(Tracker *t);
int buffer_append(unsigned char **buf, Py_ssize_t *len, Py_ssize_t *cap, const unsigned char *data,
                  Py_ssize_t n);

/* -- the reset's answer (_reset.c) -- */

enum { RESET_MORE = 0, RESET_CLEAN = 1, RESET_FAILED = 2 };
#define RESET_REPLY_MAX 65536

typedef struct {
    int owed; /* ReadyForQuery messages still owed */
    int ok;   /* no ErrorResponse so far */
    int verdict;
    unsigned char *buf; /* received, until whole messages are there */
    Py_ssize_t len, cap;
} ResetState;

extern PyTypeObject ResetReplyType;
void reset_start(ResetState *s, int owed);
int reset_feed(ResetState *s, Tracker *t, const unsigned char *data, Py_ssize_t n);

/* -- relays (_relay.c), the slot table and sending (_slots.c), the loop (_speedups.c) -- */

struct Lane;

enum { W_PARKED = 0, W_ACTIVE = 1, W_RESETTING = 2, W_RETURNED = 3 };

typedef struct {
    PyObject_HEAD
    Tracker *tracker;
    PyObject *transports[2]; /* [0] the client's (None in a warm relay), [1] the server's */
    PyObject *fd_objs[2];    /* the fds as ints, to look up in `writes` */
    PyObject *writes;        /* the epoll reactor's set of fds it waits to write to */
    int fds[2];
    PyObject *on_terminate;
    long received; /* client chunks forwarded here (client_idle_limit reads it) */
    /* A warm relay (lane != NULL): a pooled server connection lent to a Lane,
       which logs clients in on it, relays, resets and parks it again itself. */
    struct Lane *lane;
    PyObject *stack;  /* the list it parks on */
    PyObject *server; /* the server connection (BackendProtocol) */
    unsigned char *login; /* the login's end, Python's bytes; C writes only the secret */
    Py_ssize_t login_len;
    Py_ssize_t secret_at; /* where the 4 secret bytes go in `login` */
    PyObject *reset;  /* the reset queries' messages */
    int reset_count;
    long uses_left; /* sessions it may still start; negative: no limit */
    long uses;      /* sessions it started */
    int wstate;
    uint32_t pid, secret;
    double parked_at; /* CLOCK_MONOTONIC seconds */
    ResetState answer; /* the reset's answer, read as it comes */
} Relay;

enum {
    SIDE_CLIENT = 0,
    SIDE_SERVER = 1,
    SIDE_LISTEN = 2,
    SIDE_PENDING = 3,
    SIDE_ROUTED = 8,
    SIDE_TX_CLIENT = 16,
    SIDE_TX_SERVER = 17
};

#define PENDING_MAX 1024

typedef struct {
    int listen_fd;
    int answered; /* the bits of the answers given (Lane.answers) */
    double accepted_at; /* CLOCK_MONOTONIC seconds: Lane.sweep's cutoff is compared to it */
    int len;
    int addr_len;
    int port; /* the client's TCP port, for a session record */
    unsigned char addr[16];
    unsigned char buf[PENDING_MAX];
} Pending;

struct Router;

typedef struct {
    Relay *relay;      /* SIDE_CLIENT, SIDE_SERVER */
    struct Router *router; /* SIDE_ROUTED + 0 (client), + 1, + 2 (legs) */
    struct Lane *lane; /* SIDE_LISTEN, SIDE_PENDING */
    Pending *pending;  /* SIDE_PENDING */
    PyObject *tx;      /* SIDE_TX_CLIENT (a TxClient), SIDE_TX_SERVER (a TxServer) */
    int side;
} Slot;

enum { PUMPED = 0, TO_TWISTED = 1, TO_TWISTED_ERROR = 2 };

#define AGAIN (-2)

extern PyTypeObject RelayType;
extern Slot *slots;
extern int slots_size;
extern unsigned char recv_buffer[RECV_SIZE];
extern int ran_python;

double monotonic_s(void);

/* The time poll() read when its batch of events began (in_batch: handling it). */
extern double loop_now;
extern int in_batch;

/* Now, for the histograms: the batch's time inside poll(), the clock elsewhere (a
   tracker fed by Twisted's own path, a test). */
static inline double
event_now(void)
{
    return in_batch ? loop_now : monotonic_s();
}
PyObject *take_hist(double *seconds, long long *counts);
PyObject *relay_get_object(PyObject *value);
int slots_reserve(int fd);
void slot_clear(int fd);
int slot_set_relay(int fd, Relay *relay, int side);
void slot_clear_server(Relay *r);
int clear_to_send(Relay *r, int peer);
int send_now(int fd, PyObject *transport, const unsigned char *data, Py_ssize_t n);
int send_queued(PyObject *transport, const unsigned char *data, Py_ssize_t n);
ssize_t recv_chunk(int fd);
#define GOT_CHUNK 3 /* take_chunk: recv_buffer holds *n bytes */
int take_chunk(int fd, ssize_t *n);
Py_ssize_t forward_client(Relay *r, ssize_t n);
extern PyObject *str_write;
extern PyTypeObject SendNowType; /* _writer.c */
PyObject *speedups_register(PyObject *module, PyObject *args);
PyObject *speedups_unregister(PyObject *module, PyObject *args);

/* -- routed sessions (_route.c) and the shape key of a query text (_shape.c) -- */

#define ROUTE_TEXT_MAX 4096 /* longer texts are Python's (the router's key buffer) */
#define ROUTE_CLASS_READ 1  /* the class of a plain read (Router.take_counts counts them) */
#define ROUTE_CLASSES 16    /* classes 1..15 (0: none); routed.FAST_CLASSES */
#define ROUTE_STATES 16     /* states of a router's table; routed.FAST_STATES */

/* The shape key of `text` (n bytes, no NUL) into `out` (capacity n + 1 is always enough);
   returns the key's length, or -1 when the text has no key (Python must classify it). */
Py_ssize_t shape_key_into(const unsigned char *text, Py_ssize_t n, unsigned char *out);

typedef struct Router {
    PyObject_HEAD
    int fds[3]; /* [0] the client, [1] leg 0 (the primary), [2] leg 1; -1: none */
    PyObject *transports[3];
    PyObject *fd_objs[3]; /* the fds as ints, to look up in `writes` */
    PyObject *writes;     /* the epoll reactor's set of fds it waits to write to */
    PyObject *shapes;     /* Python's dict: shape key -> class */
    PyObject *on_data[3]; /* Python's: a chunk of that socket */
    PyObject *on_adopt;   /* Python's: on_adopt(leg, raw_left, class) */
    /* Python's table: per state and class, (leg or -1, the ReadyForQuery status the
       answer must end with, the state it leads to); `states` 0: disarmed. */
    signed char table[ROUTE_STATES][ROUTE_CLASSES][3]; /* statuses are ASCII letters */
    int states, state;
    long moves;           /* statements that ended here (Python compares) */
    int status;           /* the busy statement's expected ReadyForQuery status */
    int next;             /* the state its end leads to */
    int busy_class;
    int busy;             /* the leg whose answer is forwarded here, or -1 */
    int adopt_soon;       /* too much kept meanwhile: adopt at the next boundary */
    int64_t skip;         /* body bytes of the message being forwarded */
    unsigned char *pend[3]; /* what the other sockets sent while an answer was owed */
    Py_ssize_t pend_len[3], pend_cap[3];
    long received; /* client chunks routed here (client_idle_limit reads it) */
    long long queries, xacts, bytes_in, bytes_out, reads[2];
    unsigned char key[ROUTE_TEXT_MAX + 1];
} Router;

extern PyTypeObject RouterType;
int router_event(Router *r, int side, unsigned int ev);
PyObject *speedups_register_router(PyObject *module, PyObject *args);

/* -- warm logins (_lane.c: the Lane type; _login.c: accept and login; _warm.c: the session) -- */

enum { EV_ENDED = 1, EV_RESET = 2, EV_PROMOTE = 3, EV_LEFT = 4, EV_LISTENER = 5 };

/* Session records in Lane.log: a warm login, and the end of a warm session. */
enum { NOTE_STARTED = 1, NOTE_ENDED = 2 };

#define REQUEST_LEN 8 /* an answered request: length and code, nothing more */
#define ANSWERS_MAX 4
#define KEYS_MAX 4096

/* One row of Lane.answers: a request packet, the byte that answers it, its bit. */
typedef struct {
    unsigned char request[REQUEST_LEN];
    unsigned char answer;
    int bit;
} Answer;

typedef struct Lane {
    PyObject_HEAD
    int epfd;
    PyObject *entries; /* address + startup packet -> list of parked warm relays */
    PyObject *on_miss;  /* on_miss(fd, listen_fd, data, answered) */
    PyObject *on_event; /* on_event(kind, relay, data) */
    Answer answers[ANSWERS_MAX]; /* what Python lets the lane answer itself, once each */
    int answers_len;
    int closing;
    int wake;       /* call on_event(EV_LEFT) when a session ends (clients wait) */
    long free;      /* client slots free (Python's count): a warm login takes one */
    long active, pending, hits, misses;
    long pending_cap; /* Python's cap on pending clients (0: none); past it the oldest goes */
    long shed;        /* pending clients closed for the cap (Python logs and zeroes it) */
    PyObject *log; /* a list while observers watch: session records (see lane_note) */
    int keys_left;                /* bytes of `keys` not used yet */
    unsigned char keys[KEYS_MAX]; /* cancel secrets: Python's random bytes, 4 per login */
} Lane;

extern PyTypeObject LaneType;
int warm_event(Relay *r, int side, unsigned int ev);
int lane_accept(Lane *lane, int listen_fd);
int pending_event(Lane *lane, int fd, unsigned int ev);
void pending_close(Lane *lane, int fd);
void lane_shed_oldest(Lane *lane);
PyObject *relay_promote(Relay *self, PyObject *unused);
PyObject *relay_drop(Relay *self, PyObject *arg);
int lane_call(Lane *lane, int kind, PyObject *relay, PyObject *data);
int warm_send_client(Relay *r, const unsigned char *data, Py_ssize_t n);
void lane_note(Lane *lane, int kind, Relay *r, const unsigned char *addr, int addr_len, int port);

/* -- transaction pooling's lane (_txlane.c) -- */

enum { EV_TX_RETURN = 1, EV_TX_LOST = 2, EV_TX_RETIRED = 3 };

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
    int retired; /* Python retired it: when freed it goes back to Python, to be closed */
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
    long long bytes_in, bytes_out; /* this client's share of the lane's (log_disconnections) */
    double sent_at; /* when its statement running now was sent (query time) */
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
    double waited; /* seconds the clients served from the queue waited (take_waited) */
    long long wait_hist[HIST_BUCKETS]; /* those waits by log2 bucket (take_times) */
    double query_time; /* seconds of statements run here, and by log2 bucket (take_times) */
    long long query_hist[HIST_BUCKETS];
    unsigned char key[ROUTE_TEXT_MAX + 1];
} TxLane;

extern PyTypeObject TxLaneType, TxClientType, TxServerType;
int tx_event(PyObject *obj, int side, unsigned int ev);
int tx_register(int fd, PyObject *obj, int side);
void tx_unregister(int fd, PyObject *obj);
TxServer *tx_idle_take_at(TxLane *lane, Py_ssize_t i);
Py_ssize_t tx_idle_find(TxLane *lane, TxServer *s);
void tx_server_leave(TxServer *s);
void tx_queue_remove(TxLane *lane, TxClient *c);
int tx_adopt(TxClient *c, int64_t raw_left, const unsigned char *rest, Py_ssize_t rest_len);
int tx_lane_give(TxLane *lane, TxServer *s);
int tx_client_miss_kept(TxClient *c);

/* -- the shape key of a query text (_shape.c; shape_key_into is declared above) -- */

PyObject *speedups_shape_key(PyObject *module, PyObject *arg);

#endif
