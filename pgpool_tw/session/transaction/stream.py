"""A transaction-mode client's stream: a server borrowed for each transaction.

In transaction pooling (``pool_mode = transaction``) a client holds a server only from
the first message of a transaction to the ReadyForQuery that says idle with nothing owed;
then the server goes back to the pool (``pool/leases.py``) and the client's next message
borrows whichever server is free.  ``TransactionStream`` is the sans-I/O heart of such a
session: client bytes in, bytes out to the server it holds now; server bytes in, bytes out
to the client.  The client must not be able to tell, so the stream carries across servers
what a server session would have kept:

* **Prepared statements** (protocol-level Parse/Bind/Describe/Close).  A client's named
  statement is prepared on a server under the pooler's name for its text and parameter
  types (``StatementNames``: one name per distinct statement for the process, so clients
  preparing the same statement share it on each server); a Bind or Describe on a server
  that lacks it first sends the Parse there, whose ParseComplete the client never sees; a
  Parse the server already has is answered by the pooler; a Close is answered by the
  pooler and closes nothing on the server, which keeps at most
  ``max_prepared_statements`` of them (the least recently used is closed).  SQL
  ``DEALLOCATE name`` of such a statement is answered by the pooler too (psycopg sends it).
  With ``max_prepared_statements = 0`` a named statement pins the client instead.
* **SQL prepared statements** (``PREPARE`` / ``EXECUTE`` / ``DEALLOCATE``) keep the
  client's names; before a statement that uses one reaches a server, hidden statements
  make the server hold the client's text under it (``session/sql_prepared.py`` has the
  rule).  They go only where nothing of the client's can be disturbed: before a simple
  Query, or before the first extended-protocol message since a Sync (at a lease's first
  such message, for all the client's names, since a pipeline may use any of them where
  nothing can go before it).  A text of several statements that fails leaves the
  server's names unknown: the client is pinned (``prepared``) until DEALLOCATE ALL or
  DISCARD ALL.
* **Session state** (``cluster/session_state.py``): a statement that leaves state in the
  server session pins the client to its server until the state is cleared; the reasons
  are ``pinned`` (the stats snapshot shows them).  A SET of a setting whose whole effect is
  its value (``REPLAYABLE``: application_name, TimeZone, search_path, ...) outside a
  transaction is not a pin: the pooler remembers it and replays it on the next server the
  client lands on, as it replays the client's own application_name.  Replayed statements
  and their answers never reach the client.
* **Order**: replies reach the client in the order of its messages, with the pooler's
  own answers (ParseComplete, CloseComplete, a DEALLOCATE's) in their places; an error in
  an extended-protocol batch skips, as the server does, every answer owed up to the Sync.

Server messages are forwarded as they arrive (a message cut by a chunk boundary is
followed by a remaining-byte count, never joined); only a ReadyForQuery's and a
ParameterStatus's bodies are read.  Client messages are framed whole, since Parse, Bind,
Describe and Close may be rewritten and query texts are read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Optional, Protocol

from pgpool_tw.cluster.session_state import (
    StateEffect,
)
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.relay import HIST_BUCKETS, WATCH_FIRST, log2_bucket, watched_text
from pgpool_tw.protocol.sql import set_application_name
from pgpool_tw.session.transaction import answers, effects, statements
from pgpool_tw.session.transaction.owed import (
    _BIND,
    _CLOSE,
    _DESCRIBE,
    _E_EXECUTE,
    _E_FUNCTION,
    _E_HIDDEN_QUERY,
    _E_QUERY,
    _E_SYNC,
    _EXECUTE,
    _EXTENDED,
    _FUNCTION_CALL,
    _LENGTH,
    _MAX_MESSAGE,
    _PARSE,
    _QUERY,
    _SYNC,
    _TERMINATE,
    IDLE,
)
from pgpool_tw.session.transaction.sql_prepared import Hidden, SqlStatements
from pgpool_tw.session.transaction.statements import StatementNames

if TYPE_CHECKING:
    from pgpool_tw.pool.backend import BackendProtocol

__all__ = ["TransactionStream", "TxOwner"]

#: Client bytes kept while the client waits for a server (past it, it is refused).
MAX_HELD = 1 << 24


class TxOwner(Protocol):
    """The session as its stream sees it (machine.py's ``Session``)."""

    def want_server(self, first: bytes) -> None:
        """The client sent ``first`` and holds no server: lease one (``attach``) on the
        node its transaction goes to."""

    def release_server(self) -> None:
        """The transaction ended with nothing owed: the server may go back to the pool."""

    def hold_server(self) -> None:
        """The transaction ended with nothing owed but the client is pinned: its server
        stays its own (the session may keep it on the C lane until the next message)."""

    def stream_broken(self, why: str) -> None:
        """The client sent what no server would accept."""

    def local_query(self, msg: bytes, status: int) -> Optional[bytes]:
        """The session's own answer to Query ``msg`` (pgpool-II's SQL commands), or None."""


class TransactionStream:
    """One transaction-mode client over the servers it borrows (see the module doc).

    It is the session's tracker on the client side (``feed_client``) and the held
    server's tracker (``feed_server``), as ``protocol/relay.py``'s is for a session
    that keeps its server.
    """

    #: Its ``feed_client`` stops only at a Terminate (the glue reads it as a tracker's).
    local = False

    __slots__ = (
        "client_send",
        "owner",
        "names",
        "max_prepared",
        "application_name",
        "server",
        "status",
        "pending",
        "pinned",
        "statements",
        "sql",
        "wanted",
        "_asked",
        "_closed",
        "_cbuf",
        "_held",
        "_held_size",
        "_expect",
        "_unit",
        "_unnamed",
        "_failed",
        "_batch",
        "_sql_all",
        "_s_skip",
        "_s_drop",
        "_s_fakes",
        "_unsynced",
        "_s_head",
        "_s_need",
        "_s_kind",
        "_s_body",
        "_out",
        "_to_server",
        "queries",
        "xacts",
        "bytes_in",
        "bytes_out",
        "_busy_since",
        "query_time",
        "query_hist",
    )

    def __init__(
        self,
        client_send: Callable[[bytes], None],
        owner: TxOwner,
        names: StatementNames,
        max_prepared: int,
        application_name: str,
        server: Optional[BackendProtocol] = None,
    ) -> None:
        self.client_send = client_send
        self.owner = owner
        self.names = names
        self.max_prepared = max_prepared
        #: The client's own application_name (startup packet), set on each server.
        self.application_name = application_name
        #: The server held now (None between transactions).
        self.server: Optional[BackendProtocol] = server
        #: The transaction state the client was last told.
        self.status = server.status if server is not None else IDLE
        #: Queries, Syncs and FunctionCalls of the client with no ReadyForQuery yet.
        self.pending = 0
        #: Query time (as the trackers count it, from the client chunk that made the
        #: stream busy): seconds of busy periods ended, by log2 bucket too.
        self._busy_since = 0.0
        self.query_time = 0.0
        #: (made at the first observation: most transaction-mode sessions never have
        #: one, their statements run on the C lane)
        self.query_hist: Optional[list[int]] = None
        #: Why the client keeps its server (reason -> True); empty: it may go back.
        self.pinned: dict[str, bool] = {}
        #: The client's named statements: name -> Parse body after the name.
        self.statements: dict[bytes, bytes] = {}
        #: The client's SQL prepared statements (PREPARE), under its own names.
        self.sql = SqlStatements()
        #: REPLAYABLE settings the client changed: setting -> its SET statement.
        self.wanted: dict[str, str] = {}
        self._asked = False
        self._closed = False
        self._cbuf = bytearray()
        #: Whole client messages waiting for a server, and their size.
        self._held: list[bytes] = []
        self._held_size = 0
        #: What the server owes, in order: (kind, detail) per message sent.
        self._expect: deque[tuple[int, Any]] = deque()
        #: Effects of the client's statements since its last Query or Sync.
        self._unit: list[StateEffect] = []
        #: The effect of the unnamed statement's text (its Bind runs it).
        self._unnamed: Optional[StateEffect] = None
        #: An ErrorResponse answered the current unit.
        self._failed = False
        #: An extended-protocol message went to the server since the last Sync or Query.
        self._batch = False
        #: All the client's SQL statements were put on the server held now.
        self._sql_all = False
        # Server side: bytes of the current message still to come, whether they are
        # dropped, a cut header, a ReadyForQuery/ParameterStatus body being collected.
        self._s_skip = 0
        self._s_drop = False
        self._s_fakes = False
        self._unsynced = False
        self._s_head = b""
        self._s_need = 0
        self._s_kind = 0
        self._s_body = b""
        self._out: list[bytes] = []
        self._to_server: list[bytes] = []
        self.queries = 0
        self.xacts = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # -- the parts kept in their own files (the stream's methods all the same) -----
    feed_server = answers.feed_server
    _message = answers._message
    _settle = answers._settle
    _skip_to_sync = answers._skip_to_sync
    _drain_fakes = answers._drain_fakes
    _body = answers._body
    _fake = answers._fake
    statement_text = effects.statement_text
    _effect = effects._effect
    _pin = effects._pin
    _query = effects._query
    _start_batch = effects._start_batch
    _sql_on = effects._sql_on
    _sql_sync = effects._sql_sync
    _sql_answer = effects._sql_answer
    _unit_ended = effects._unit_ended
    _clear = effects._clear
    _answer_parse = statements._answer_parse
    _parse = statements._parse
    _prepare = statements._prepare
    _ours = statements._ours
    _bind = statements._bind
    _describe = statements._describe
    _close = statements._close

    # -- what the session and the glue read ------------------------------------------

    @property
    def params(self) -> dict[str, str]:
        server = self.server
        return server.params if server is not None else {}

    @property
    def in_sync(self) -> bool:
        """Nothing owed either way, no extended-protocol batch open (its implicit
        transaction ends at its Sync), and both streams at a message boundary."""
        return (
            not self._expect
            and not self._unsynced
            and not self._cbuf
            and not self._held
            and not self._s_skip
            and not self._s_head
            and not self._s_need
        )

    @property
    def server_at_boundary(self) -> bool:
        return not self._s_skip and not self._s_head and not self._s_need

    @property
    def busy_since(self) -> float:
        """When the client's statements last went from none owed to some: a cancel is
        bound to that busy period (``session/cancel.py``)."""
        return self._busy_since

    @property
    def unsynced(self) -> bool:
        """Extended-protocol messages were sent after the last Sync (an Execute may run)."""
        return self._unsynced

    @property
    def idle(self) -> bool:
        """Between transactions: no server held, nothing owed."""
        return self.server is None and not self._held and not self._expect

    @property
    def quiet(self) -> bool:
        """Between transactions with no client byte kept: the C lane may take the next
        chunk (it starts a transaction of its own or hands the chunk back here)."""
        return (
            self.server is None
            and not self._closed
            and not self._held
            and not self._expect
            and not self._cbuf
            and not self._unsynced
            and not self.pinned
        )

    def take_times(self) -> tuple[float, tuple[int, ...]]:
        hist, self.query_hist = self.query_hist, None
        times = (self.query_time, tuple(hist) if hist is not None else ())
        self.query_time = 0.0
        return times

    def _answered_all(self) -> None:
        """The last ReadyForQuery owed arrived: a busy period ends."""
        took = monotonic() - self._busy_since
        self.query_time += took
        hist = self.query_hist
        if hist is None:
            hist = self.query_hist = [0] * HIST_BUCKETS
        hist[log2_bucket(took)] += 1

    def take_counts(self) -> tuple[int, int, int, int]:
        counts = (self.queries, self.xacts, self.bytes_in, self.bytes_out)
        self.queries = self.xacts = self.bytes_in = self.bytes_out = 0
        return counts

    # -- the server comes and goes ------------------------------------------------------

    def attach(self, server: BackendProtocol) -> None:
        """A server is the client's now: bring its session to what the client expects,
        then send what the client sent meanwhile."""
        self.server = server
        self._asked = False
        self._batch = False
        self._sql_all = False
        self._replay(server)
        self._hidden(self.sql.trim(server.sql_prepared))
        held, self._held = self._held, []
        self._held_size = 0
        for msg in held:
            self._client_message(msg[0], msg)
        self._flush()
        self._maybe_release()

    def detached(self) -> None:
        """The server went back to the pool (or away)."""
        self.server = None

    def adopt(self, server: BackendProtocol, raw_left: int, status: int = 0) -> None:
        """Carry on a transaction the C lane began with simple Queries whose texts leave
        nothing (the shapes table says so): with a ``status``, a transaction block
        between statements; else one Query is owed, its answer forwarded up to a message
        boundary, or ``raw_left`` body bytes short of one."""
        self.server = server
        self._asked = False
        self._batch = False
        self._sql_all = False
        if status:
            self.status = status
            return
        if not self.pending:
            self._busy_since = monotonic()  # sent by the lane a moment ago
        self.pending += 1
        self._expect.append((_E_QUERY, None))
        if raw_left:
            self._s_skip = raw_left
            self._s_drop = False

    def close(self) -> None:
        """The session ended: whatever still arrives is dropped."""
        self._closed = True
        self.server = None
        self._held = []

    def settle(self) -> None:
        """Give the server back if the transaction is over (after the login, which ends
        idle with nothing sent)."""
        self._maybe_release()

    def _replay(self, server: BackendProtocol) -> None:
        """Hidden statements that make ``server``'s replayable settings the client's."""
        replayed = server.replayed
        wanted = self.wanted
        texts: list[str] = []
        if wanted or replayed:
            for name in set(wanted) | set(replayed):
                text = wanted.get(name)
                if text == replayed.get(name):
                    continue
                if text is None:
                    del replayed[name]
                    if name == "application_name":
                        continue  # the client's own name, below
                    text = f"RESET {name}"
                else:
                    replayed[name] = text
                texts.append(text)
        app = self.application_name
        if "application_name" not in wanted and server.params.get("application_name", "") != app:
            texts.append(set_application_name(app))
        for text in texts:
            self._send(m.query(text), _E_HIDDEN_QUERY)

    def _hidden(self, statements: list[Hidden]) -> None:
        """SQL prepared-statement work on the server the client never sees."""
        for hidden in statements:
            self._send(m.query(hidden[0]), _E_HIDDEN_QUERY, hidden)

    # -- client to server ---------------------------------------------------------------

    def feed_client(self, data: bytes) -> int:
        """Frame a client chunk; 0 when it held a Terminate (never forwarded), else -1."""
        if self._closed:
            return -1
        self.bytes_in += len(data)
        if not self.pending:
            self._busy_since = monotonic()
        buf: bytes | bytearray
        if self._cbuf:
            buf = self._cbuf
            buf += data
        else:
            buf = data
        pos, size = 0, len(buf)
        terminated = False
        while size - pos >= 5:
            length = _LENGTH(buf, pos + 1)[0]
            if length < 4 or length > _MAX_MESSAGE:
                self._cbuf = bytearray()
                self._flush()
                self.owner.stream_broken(f"invalid message length {length}")
                return -1
            end = pos + 1 + length
            if end > size:
                break
            kind = buf[pos]
            if kind == _TERMINATE:
                terminated = True
                pos = size
                break
            msg = bytes(buf[pos:end])
            if self.server is None:
                if kind == _PARSE and not self._held and self._answer_parse(msg, buf, end):
                    pos = end + 5  # the Sync, answered too
                    continue
                if kind == _QUERY and not self._held and self._local_first(msg):
                    pos = end
                    continue
                self._hold(msg)
            else:
                try:
                    self._client_message(kind, msg)
                except (ValueError, IndexError):
                    self._cbuf = bytearray()
                    self._flush()
                    self.owner.stream_broken("malformed message")
                    return -1
            pos = end
        if buf is self._cbuf:
            del buf[:pos]
        elif pos < size:
            self._cbuf = bytearray(buf[pos:])
        self._flush()
        if not terminated:
            self._maybe_release()
        return 0 if terminated else -1

    def _local_first(self, msg: bytes) -> bool:
        """A Query the session answered itself (one of pgpool-II's SQL commands)."""
        return len(msg) > 5 and msg[5] in WATCH_FIRST and self._answer_local(msg)

    def _answer_local(self, msg: bytes) -> bool:
        """pgpool-II's SQL commands, answered by the session when nothing is owed."""
        answer = self.owner.local_query(msg, self.status) if watched_text(msg[5:-1]) else None
        if answer is None:
            return False
        self._out.append(answer)
        return True

    def _hold(self, msg: bytes) -> None:
        self._held.append(msg)
        self._held_size += len(msg)
        if self._held_size > MAX_HELD:
            self.owner.stream_broken("too much data sent while waiting for a server")
            return
        if not self._asked:
            self._asked = True
            self.owner.want_server(msg)

    def _client_message(self, kind: int, msg: bytes) -> None:
        if kind in _EXTENDED:
            self._unsynced = True
        elif kind == _SYNC:
            self._unsynced = False
        if kind == _QUERY:
            if self._expect or self._unsynced or not self._local_first(msg):
                self._query(msg)
        elif kind == _PARSE:
            self._parse(msg)
        elif kind == _BIND:
            self._bind(msg)
        elif kind == _EXECUTE:
            self._start_batch()
            self._send(msg, _E_EXECUTE)
        elif kind == _SYNC:
            self._batch = False
            self.pending += 1
            self._send(msg, _E_SYNC, self._take_unit())
        elif kind == _DESCRIBE:
            self._describe(msg)
        elif kind == _CLOSE:
            self._close(msg)
        elif kind == _FUNCTION_CALL:
            self.pending += 1
            self._send(msg, _E_FUNCTION, self._take_unit())
        else:
            # Flush, COPY data, anything else: no answer of its own is owed.
            self._send(msg, -1)

    def _send(self, msg: bytes, expect: int, detail: Any = None) -> None:
        if expect >= 0:
            self._expect.append((expect, detail))
        self._to_server.append(msg)

    def _flush(self) -> None:
        """Send what this turn owes the server, then the client."""
        sent = self._to_server
        if sent:
            self._to_server = []
            server = self.server
            if server is not None:
                server.send(b"".join(sent) if len(sent) > 1 else sent[0])
        out = self._out
        if out:
            self._out = []
            self.client_send(b"".join(out) if len(out) > 1 else out[0])

    def _take_unit(self) -> list[StateEffect]:
        unit, self._unit = self._unit, []
        return unit

    # -- server to client ---------------------------------------------------------------

    # Statements up to the error have answered; what follows the Sync is unaffected.

    def _maybe_release(self) -> None:
        if (
            self.server is not None
            and not self._closed
            and not self._expect
            and not self._unsynced
            and self.status == IDLE
            and not self._held
            and not self._s_skip
            and not self._s_head
            and not self._s_need
        ):
            if not self.pinned:
                self.owner.release_server()
            elif not self._cbuf:
                self.owner.hold_server()
