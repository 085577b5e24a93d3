"""Following an attached session's two byte streams by their 5-byte headers.

This is the hot path.  The relay forwards each received chunk untouched; the
tracker only walks message headers inside it to learn what the pooler must
know to end a session safely:

* where the client's Terminate is (it is never forwarded: the server stays up),
* how many Query/Sync/FunctionCall messages still await their ReadyForQuery,
* whether the client left extended-protocol messages without a Sync,
* the transaction state of the last ReadyForQuery,
* ParameterStatus changes (replayed to the next client of that connection),
* counters for the stats snapshot (``take_counts``): queries, transactions and
  bytes, as plain int adds, read by Python only when it harvests them,
* where a Query starts whose text begins with a word of ``watch`` (``LOCAL_WORDS``:
  pgpool-II's SQL commands, ``SHOW pool_nodes``, ``PGPOOL SET ...``), so that Python
  decides whether the pooler answers it (``cluster/pgpool_sql.py``).  The walk stops
  before such a Query (``local`` is then true), as before a Terminate; a Query whose
  first words a chunk boundary cuts stops there too, and Python reads the rest.

Counting, after PgBouncer's SHOW STATS: a *query* is a Query, a Sync-ended
extended-protocol batch or a FunctionCall, counted when the ReadyForQuery that
answers it arrives; a *transaction* is counted when such a ReadyForQuery
reports idle (``I``), so an autocommit statement is one and BEGIN ... COMMIT is
one.  PgBouncer counts both when the client starts them, which makes a
difference only for a query or transaction still under way (counted there, not
yet here) and for a pipeline sent before any answer (PgBouncer counts it as one
query, this as one per ReadyForQuery).  Bytes are what each side sent while
the session was attached, a Terminate included; the login is not counted.

Rules of this module: no objects per message, no joining of received chunks,
no exceptions raised; a message split across chunks is followed with a
remaining-byte count, and only a split header or a ParameterStatus or
ReadyForQuery body is ever copied.  Malformed lengths are not judged here: the
server judges them and closes, and a session whose streams are not at a message
boundary is never reused.
"""

from __future__ import annotations

from struct import Struct
from time import monotonic

from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.messages import IDLE, parse_parameter_status

_LENGTH = Struct("!I").unpack_from

# Client message types, as ints.
_QUERY = 81  # 'Q'
_SYNC = 83  # 'S'
_FUNCTION_CALL = 70  # 'F'
_TERMINATE = 88  # 'X'
_COPY_DATA = 100  # 'd'
_COPY_DONE = 99  # 'c'
_COPY_FAIL = 102  # 'f'
#: Durations are counted by log2 bucket of their microseconds: bucket 0 holds under
#: 1 us, bucket k [2^(k-1), 2^k) us, the last one the rest.  C counts by the same rule
#: (``_speedups.h`` ``log2_bucket``: one instruction); the stats totals add the buckets
#: up (``stats/counters.py``) and Prometheus reads them as upper bounds of 2^k us.
HIST_BUCKETS = 32


def log2_bucket(seconds: float) -> int:
    """The bucket of a duration."""
    us = int(seconds * 1e6)
    return min(us.bit_length(), HIST_BUCKETS - 1) if us > 0 else 0


#: The words (lower case) a Query text may start with, after whitespace, for the walk to
#: stop before it: every command ``cluster.pgpool_sql.local_command`` accepts starts so.
LOCAL_WORDS = (b"show", b"pgpool")
_SPACE = b" \t\n\r\f\v"
#: The bytes a watched Query text may start with: whitespace or a word's first letter.
WATCH_FIRST = frozenset(
    _SPACE + bytes(w[0] for w in LOCAL_WORDS) + bytes(w[0] - 32 for w in LOCAL_WORDS)
)


def watched_text(text: bytes, words: tuple[bytes, ...] = LOCAL_WORDS) -> bool:
    """A whole Query text starts, after whitespace, with one of ``words`` (any case):
    the streams that frame whole messages ask what the walk asks of a chunk."""
    head = text[:64].lstrip(_SPACE).lower()
    return any(head.startswith(word) for word in words)


# Server message types, as ints.
_READY = 90  # 'Z'
_PARAMETER_STATUS = 83  # 'S'


class SessionTracker:
    """Headers-only view of one session; shared by both directions of a relay."""

    __slots__ = (
        "pending",
        "unsynced",
        "status",
        "params",
        "_c_skip",
        "_c_head",
        "_s_skip",
        "_s_head",
        "_s_type",
        "_s_body",
        "_s_need",
        "queries",
        "xacts",
        "bytes_in",
        "bytes_out",
        "watch",
        "local",
        "_busy_since",
        "query_time",
        "query_hist",
    )

    def __init__(
        self, params: dict[str, str], status: int = IDLE, watch: tuple[bytes, ...] = ()
    ) -> None:
        #: Query/Sync/FunctionCall messages sent that have no ReadyForQuery yet.
        self.pending = 0
        #: Extended-protocol messages were sent after the last Sync.
        self.unsynced = False
        #: Transaction state byte of the last ReadyForQuery.
        self.status = status
        #: The server connection's reported parameters, updated in place.
        self.params = params
        self._c_skip = 0  # bytes of the current client message still to come
        self._c_head = b""  # start of a client header cut by a chunk boundary
        self._s_skip = 0
        self._s_head = b""
        self._s_type = 0  # type whose body is being collected across chunks
        self._s_body = b""
        self._s_need = 0
        #: ReadyForQuery messages that answered a Query, Sync or FunctionCall.
        self.queries = 0
        #: Those of them that reported idle: a transaction ended.
        self.xacts = 0
        #: Client bytes walked.
        self.bytes_in = 0
        #: Server bytes walked.
        self.bytes_out = 0
        #: Words a Query text may start with for the walk to stop before it.
        self.watch = watch
        #: The last stop of ``feed_client`` was before such a Query, not a Terminate.
        self.local = False
        #: Query time: when the server's queue last went busy; the seconds of busy
        #: periods ended, and their counts by log2 bucket (stats/counters.py).
        self._busy_since = 0.0
        self.query_time = 0.0
        self.query_hist = [0] * HIST_BUCKETS

    def take_times(self) -> tuple[float, tuple[int, ...]]:
        """(query seconds, their counts by log2 bucket) since the last take; zeroes them."""
        times = (self.query_time, tuple(self.query_hist))
        self.query_time = 0.0
        self.query_hist = [0] * HIST_BUCKETS
        return times

    def _answered(self) -> None:
        """A ReadyForQuery answered a Query, Sync or FunctionCall."""
        self.pending -= 1
        self.queries += 1
        if self.status == IDLE:
            self.xacts += 1
        if not self.pending:
            took = monotonic() - self._busy_since
            self.query_time += took
            self.query_hist[log2_bucket(took)] += 1

    def take_counts(self) -> tuple[int, int, int, int]:
        """(queries, xacts, bytes_in, bytes_out) since the last take; zeroes them."""
        counts = (self.queries, self.xacts, self.bytes_in, self.bytes_out)
        self.queries = self.xacts = self.bytes_in = self.bytes_out = 0
        return counts

    @property
    def in_sync(self) -> bool:
        """Both streams are at a message boundary and the server owes nothing."""
        return (
            self.pending == 0
            and not self.unsynced
            and not self._c_skip
            and not self._c_head
            and not self._s_skip
            and not self._s_head
            and not self._s_need
        )

    @property
    def busy_since(self) -> float:
        """When the server's queue last went busy: a cancel is bound to that busy period
        (``session/cancel.py``), read only there."""
        return self._busy_since

    @property
    def server_at_boundary(self) -> bool:
        """The client has been sent whole server messages only."""
        return not self._s_skip and not self._s_head and not self._s_need

    # -- client to server --------------------------------------------------------

    def feed_client(self, data: bytes) -> int:
        """Walk a client chunk; return the offset of a Terminate in it, or -1."""
        n = len(data)
        self.bytes_in += n
        pos = self._c_skip
        if pos >= n:
            self._c_skip = pos - n
            return -1
        if self._c_head:
            head = self._c_head + data[: 5 - len(self._c_head)]
            if len(head) < 5:
                self._c_head = head
                return -1
            start = -len(self._c_head)
            self._c_head = b""
            if self._client_message(head[0]):
                # Part of this Terminate already went to the server: not reusable.
                self.unsynced = True
                self._c_skip = 0
                self.local = False
                return 0
            # A length under 4 (malformed) is taken as 4: never step back before the header.
            pos = start + 1 + max(_LENGTH(head, 1)[0], 4)
        while pos < n:
            if n - pos < 5:
                self._c_head = data[pos:]
                self._c_skip = 0
                return -1
            # _client_message inlined: this loop runs for every client message.
            kind = data[pos]
            if kind == _QUERY or kind == _FUNCTION_CALL:
                if kind == _QUERY and self.watch and self._watched(data, pos, n):
                    self.bytes_in -= n - pos  # walked again when Python passes it on
                    self._c_skip = 0
                    self.local = True
                    return pos
                if not self.pending:
                    self._busy_since = monotonic()
                self.pending += 1
            elif kind == _SYNC:
                if not self.pending:
                    self._busy_since = monotonic()
                self.pending += 1
                self.unsynced = False
            elif kind == _TERMINATE:
                self._c_skip = 0
                self.local = False
                return pos
            elif kind != _COPY_DATA and kind != _COPY_DONE and kind != _COPY_FAIL:
                self.unsynced = True
            pos += 1 + _LENGTH(data, pos + 1)[0]
        self._c_skip = pos - n
        return -1

    def _watched(self, data: bytes, pos: int, n: int) -> bool:
        """The Query at ``pos`` starts with a watched word, or the chunk ends before
        that is known (a cut text: Python reads on)."""
        end = pos + 1 + _LENGTH(data, pos + 1)[0] - 1  # its text ends before the NUL
        cut = end > n
        if cut:
            end = n
        at = pos + 5
        while at < end and data[at] in _SPACE:
            at += 1
        if at >= end:
            return cut
        for word in self.watch:
            size = len(word)
            head = data[at : min(at + size, end)].lower()  # never the NUL's place
            if head == word or (cut and end - at < size and word.startswith(head)):
                return True
        return False

    def pass_query(self, size: int, sent: int) -> None:
        """The Query the walk stopped before, ``size`` bytes long, goes to the server
        after all, ``sent`` bytes of it now: count it and skip the rest of it."""
        if not self.pending:
            self._busy_since = monotonic()
        self.pending += 1
        self.bytes_in += sent
        self._c_skip = size - sent

    def _client_message(self, kind: int) -> bool:
        """One client message's effect (the loop above has the same rules inline)."""
        if kind == _SYNC or kind == _QUERY or kind == _FUNCTION_CALL:
            if not self.pending:
                self._busy_since = monotonic()
            self.pending += 1
            if kind == _SYNC:
                self.unsynced = False
        elif kind == _TERMINATE:
            return True
        elif kind != _COPY_DATA and kind != _COPY_DONE and kind != _COPY_FAIL:
            self.unsynced = True
        return False

    # -- server to client --------------------------------------------------------

    def feed_server(self, data: bytes) -> None:
        """Walk a server chunk, noting ReadyForQuery states and ParameterStatus."""
        n = len(data)
        self.bytes_out += n
        pos = self._s_skip
        if self._s_need:
            need = self._s_need
            self._s_body += data[:need]
            if n < need:
                self._s_need = need - n
                return
            self._s_need = 0
            self._server_body(self._s_type, self._s_body)
            self._s_body = b""
            pos = need
        elif pos >= n:
            self._s_skip = pos - n
            return
        elif self._s_head:
            head = self._s_head + data[: 5 - len(self._s_head)]
            if len(head) < 5:
                self._s_head = head
                return
            start = -len(self._s_head)
            self._s_head = b""
            pos = self._server_header(data, head, 0, start + 5)
        while pos < n:
            if n - pos < 5:
                self._s_head = data[pos:]
                self._s_skip = 0
                return
            kind = data[pos]
            end = pos + 1 + _LENGTH(data, pos + 1)[0]
            if kind == _READY and end <= n:
                # _server_body inlined for the whole ReadyForQuery of every reply.
                if end > pos + 5:
                    self.status = data[pos + 5]
                if self.pending:
                    self._answered()
            elif kind == _READY or kind == _PARAMETER_STATUS:
                end = self._server_header(data, data, pos, pos + 5)
                if self._s_need:
                    return
            pos = end
        self._s_skip = pos - n

    def _server_header(self, data: bytes, head: bytes, at: int, body_start: int) -> int:
        """Handle a header found in ``head`` at ``at`` whose body starts at ``body_start``
        in ``data`` (negative when the header began in an earlier chunk)."""
        kind = head[at]
        # As in feed_client, a malformed length under 4 is taken as 4.
        end = body_start - 4 + max(_LENGTH(head, at + 1)[0], 4)
        if kind != _READY and kind != _PARAMETER_STATUS:
            return end
        if end > len(data):
            self._s_type = kind
            self._s_body = data[body_start:]
            self._s_need = end - len(data)
            return len(data)
        self._server_body(kind, data[body_start:end])
        return end

    def _server_body(self, kind: int, body: bytes) -> None:
        if kind == _READY:
            if body:
                self.status = body[0]
            if self.pending:
                self._answered()
        else:
            try:
                name, value = parse_parameter_status(body)
            except ProtocolViolation:
                return
            self.params[name] = value
