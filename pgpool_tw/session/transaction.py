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
from struct import Struct
from typing import TYPE_CHECKING, Any, Optional, Protocol

from pgpool_tw.cluster.session_state import (
    ALL,
    DEALLOCATE,
    EXECUTE,
    NOTHING,
    PREPARED,
    SET,
    UNPARSED,
    StateEffect,
    shaped_effect,
    state_effect,
)
from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.sql import quote_literal
from pgpool_tw.session.sql_prepared import Hidden, SqlStatements

if TYPE_CHECKING:
    from pgpool_tw.pool.backend import BackendProtocol

__all__ = ["NAMED_STATEMENT", "StatementNames", "TransactionStream", "TxOwner"]

_LENGTH = Struct("!I").unpack_from
_MAX_MESSAGE = 0x3FFFFFFF

IDLE = m.IDLE
_FAILED = m.IN_FAILED_TRANSACTION

# Client message types.
_QUERY, _PARSE, _BIND, _DESCRIBE, _EXECUTE = b"QPBDE"
_CLOSE, _FLUSH, _SYNC, _FUNCTION_CALL, _TERMINATE = b"CHSFX"
# Server message types.
_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE = b"123"
_ROW_DESCRIPTION, _NO_DATA, _COMMAND_COMPLETE, _EMPTY_QUERY, _SUSPENDED = b"TnCIs"
_READY, _PARAMETER_STATUS, _ERROR = b"ZSE"

#: What the server owes for each message sent, in order (``_expect`` entries' kinds).
#: The first eight are the client's; HIDDEN ones are the pooler's own (their answers
#: never reach the client); FAKE ones were never sent: the pooler answers in their place.
(
    _E_PARSE,
    _E_BIND,
    _E_DESCRIBE,
    _E_EXECUTE,
    _E_CLOSE,
    _E_SYNC,
    _E_QUERY,
    _E_FUNCTION,
    _E_HIDDEN_PARSE,
    _E_HIDDEN_CLOSE,
    _E_HIDDEN_QUERY,
    _E_FAKE,
) = range(12)
_EXTENDED = frozenset((_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE))
_UNIT_ENDS = frozenset((_E_SYNC, _E_QUERY, _E_FUNCTION, _E_HIDDEN_QUERY))
_SIMPLE = frozenset((_E_QUERY, _E_FUNCTION, _E_HIDDEN_QUERY))

_PARSE_COMPLETE_MSG = b"1\x00\x00\x00\x04"
_SYNC_MESSAGE = b"S\x00\x00\x00\x04"
_CLOSE_COMPLETE_MSG = b"3\x00\x00\x00\x04"
_DEALLOCATE_DONE = m.message(b"C", b"DEALLOCATE\x00")

#: The pin reason of a named protocol statement with max_prepared_statements = 0.
NAMED_STATEMENT = "named_statement"

#: Effects of Query texts by the C loop's shape key (``_shape.c``: literals as placeholder
#: bytes; equal keys normalize alike), for effects every text of the shape shares: a
#: pgbench -S query is then one dict lookup, with no decoding and no parse.
_BY_SHAPE: dict[bytes, StateEffect] = {}
_BY_SHAPE_MAX = 10000
_shape_key = speedups.shape_key if speedups is not None else None

#: Client bytes kept while the client waits for a server (past it, it is refused).
MAX_HELD = 1 << 24


class TxOwner(Protocol):
    """The session as its stream sees it (machine.py's ``Session``)."""

    def want_server(self, first: bytes) -> None:
        """The client sent ``first`` and holds no server: lease one (``attach``) on the
        node its transaction goes to."""

    def release_server(self) -> None:
        """The transaction ended with nothing owed: the server may go back to the pool."""

    def stream_broken(self, why: str) -> None:
        """The client sent what no server would accept."""


class StatementNames:
    """The pooler's name for each distinct prepared statement (text and parameter types).

    One per process, shared by every transaction-mode session, so that a hundred clients
    preparing pgbench's statements prepare them once per server, not a hundred times.
    Bounded: the oldest names are forgotten first (a server that still holds one closes it
    when its own cache evicts it).
    """

    __slots__ = ("_names", "_next", "limit", "parsed")

    def __init__(self, limit: int = 100_000) -> None:
        self._names: dict[bytes, bytes] = {}
        self._next = 0
        self.limit = limit
        #: Names a server has parsed without an error: a client that prepares one of
        #: these alone (Parse, Sync) while it holds no server is answered by the pooler.
        self.parsed: set[bytes] = set()

    def known(self, content: bytes) -> bool:
        """A server parsed this statement before (so its Parse may be answered alone)."""
        name = self._names.get(content)
        return name is not None and name in self.parsed

    def name_for(self, content: bytes) -> bytes:
        name = self._names.get(content)
        if name is None:
            self._next += 1
            name = b"pgpool_tw_%d" % self._next
            if len(self._names) >= self.limit:
                del self._names[next(iter(self._names))]
                if len(self.parsed) > self.limit:
                    self.parsed.clear()
            self._names[content] = name
        return name


class TransactionStream:
    """One transaction-mode client over the servers it borrows (see the module doc).

    It is the session's tracker on the client side (``feed_client``) and the held
    server's tracker (``feed_server``), as ``protocol/relay.py``'s is for a session
    that keeps its server.
    """

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
    def idle(self) -> bool:
        """Between transactions: no server held, nothing owed."""
        return self.server is None and not self._held and not self._expect

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
            texts.append(f"SET application_name TO {quote_literal(app)}")
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

    def _answer_parse(self, msg: bytes, buf: bytes | bytearray, end: int) -> bool:
        """A Parse and Sync alone (libpq's PQprepare) of a statement a server parsed
        before, from a client that holds no server: answered by the pooler.

        Why: pgbench -M prepared prepares synchronously, one client at a time per thread;
        if that waited for a server held by a client of the same thread mid-transaction,
        the thread would wait for ever.  The statement is prepared on whichever server
        the client's Bind reaches (an error it would raise comes there, not here).
        """
        if bytes(buf[end : end + 5]) != _SYNC_MESSAGE or not self.max_prepared:
            return False
        name_end = msg.index(b"\0", 5)
        name = msg[5:name_end]
        content = msg[name_end + 1 :]
        if not name or not self.names.known(content):
            return False
        self._effect(m.decode(content[: content.index(b"\0")]))  # its pins, if any
        self.statements[name] = content
        self._out.append(_PARSE_COMPLETE_MSG + m.ready_for_query(self.status))
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

    def statement_text(self, msg: bytes) -> Optional[str]:
        """The text a transaction's first message runs (a Query's, a Parse's, a named
        statement's Bind), for routing; None when it names none."""
        kind = msg[0]
        if kind == _QUERY:
            return m.decode(msg[5:-1])
        if kind == _PARSE:
            start = msg.index(b"\0", 5) + 1
            return m.decode(msg[start : msg.index(b"\0", start)])
        if kind == _BIND:
            portal_end = msg.index(b"\0", 5)
            name = msg[portal_end + 1 : msg.index(b"\0", portal_end + 1)]
            content = self.statements.get(name) if name else None
            if content is not None:
                return m.decode(content[: content.index(b"\0")])
        return None

    def _effect(self, text: str) -> StateEffect:
        effect = state_effect(text)
        self._pin(effect)
        return effect

    def _pin(self, effect: StateEffect) -> None:
        """What a statement pins counts from the moment it is sent (the safe side)."""
        if effect.pins:
            for reason in effect.pins:
                if reason != UNPARSED:
                    self.pinned[reason] = True
        if effect.replay and self.status != IDLE:
            # Inside a transaction block the SET may yet be rolled back: keep the server.
            self.pinned[SET] = True

    def _query(self, msg: bytes) -> None:
        key = _shape_key(memoryview(msg)[5:-1]) if _shape_key is not None else None
        effect = _BY_SHAPE.get(key) if key is not None else None
        if effect is None:
            effect, shared = shaped_effect(m.decode(msg[5:-1]))
            if shared and key is not None:
                if len(_BY_SHAPE) >= _BY_SHAPE_MAX:
                    _BY_SHAPE.clear()
                _BY_SHAPE[key] = effect
        self._pin(effect)
        self.pending += 1
        start = not self._batch
        self._batch = False
        if effect.sql:
            if self._sql_answer(effect, start):
                return
            self._sql_sync(effect, start)
        elif effect is NOTHING and not self._unit:
            self._send(msg, _E_QUERY)  # the common case: nothing to remember
            return
        unit = self._take_unit()
        unit.append(effect)
        self._send(msg, _E_QUERY, unit)

    def _start_batch(self) -> bool:
        """An extended-protocol message: True when it is the first since the last Sync or
        Query, so that hidden statements may still go before it (a Query in a batch
        would end the client's unnamed statement and portal, and after an error the
        server skips it)."""
        if self._batch:
            return False
        self._batch = True
        if not self._sql_all and self.sql.texts and self._sql_on():
            # A pipeline may EXECUTE any of them mid-batch, where nothing can go first.
            self._sql_all = True
            server = self.server
            assert server is not None
            self._hidden(self.sql.sync_all(server.sql_prepared))
        return True

    def _sql_on(self) -> bool:
        """Hidden SQL-statement work may be done: not while a failed text left the
        server's names unknown (the client is pinned there: the server is the truth), nor
        in a failed transaction block (it would fail, as the client's statement will)."""
        return PREPARED not in self.pinned and self.status != _FAILED

    def _sql_sync(self, effect: StateEffect, start: bool) -> None:
        """Before a statement that uses SQL prepared names: the server's made the
        client's, when hidden statements may go first; the pins of what it EXECUTEs."""
        server = self.server
        assert server is not None
        if start and self._sql_on():
            self._hidden(self.sql.sync_uses(server.sql_prepared, effect.sql))
        for reason in self.sql.runs(effect.sql):
            self.pinned[reason] = True

    def _sql_answer(self, effect: StateEffect, start: bool) -> bool:
        """A PREPARE or DEALLOCATE alone that the pooler answers in the server's place:
        a DEALLOCATE of a protocol-level statement of the client (psycopg sends it: it
        never existed under that name on a server), or what ``SqlStatements.answer``
        says, when the client's transaction state is known and not failed (PostgreSQL
        would refuse there)."""
        if effect.several:
            return False
        verb, name, _ = effect.sql[0]
        if verb == DEALLOCATE and name and name not in self.sql.texts:
            key = m.encode(name)
            if key not in self.statements:
                return False
            del self.statements[key]
            self._fake(_DEALLOCATE_DONE, query=True)
            return True
        server = self.server
        if not start or self._expect or server is None or not self._sql_on():
            return False
        tag = self.sql.answer(server.sql_prepared, effect.sql)
        if tag:
            self._fake(m.message(b"C", tag + b"\0"), query=True)
        return bool(tag)

    def _fake(self, reply: bytes, query: bool = False) -> None:
        """Answer in the server's place, after whatever the server owes before it."""
        self._expect.append((_E_FAKE, (reply, query)))
        if len(self._expect) == 1:
            self._drain_fakes()

    def _parse(self, msg: bytes) -> None:
        name_end = msg.index(b"\0", 5)
        name = msg[5:name_end]
        content = msg[name_end + 1 :]
        text_end = content.index(b"\0")
        # Pins count from the Parse (the safe side); what a statement clears or replays
        # counts when a Bind runs it (psycopg prepares DEALLOCATE ALL before running it).
        start = self._start_batch()
        effect = self._effect(m.decode(content[:text_end]))
        if effect.sql:
            self._sql_sync(effect, start)
        if not name:
            self._unnamed = effect
            self._send(msg, _E_PARSE)
            return
        if not self.max_prepared:
            self.pinned[NAMED_STATEMENT] = True
            self._send(msg, _E_PARSE)
            return
        self.statements[name] = content
        ours = self.names.name_for(content)
        server = self.server
        assert server is not None
        prepared = server.prepared
        if ours in prepared:
            prepared.move_to_end(ours)
            self._fake(_PARSE_COMPLETE_MSG)
            return
        self._prepare(ours, content, _E_PARSE)

    def _prepare(self, ours: bytes, content: bytes, expect: int) -> None:
        """Parse a statement on the server under the pooler's name (evicting the least
        recently used past max_prepared_statements)."""
        server = self.server
        assert server is not None
        prepared = server.prepared
        while len(prepared) >= self.max_prepared:
            old, _ = prepared.popitem(last=False)
            self._send(m.message(b"C", b"S" + old + b"\0"), _E_HIDDEN_CLOSE)
        prepared[ours] = None
        self._send(m.message(b"P", ours + b"\0" + content), expect, ours)

    def _ours(self, name: bytes) -> Optional[bytes]:
        """The pooler's name for the client's statement ``name``, prepared on the server
        held now; None when the client has no such statement (the server says so)."""
        content = self.statements.get(name)
        if content is None:
            return None
        ours = self.names.name_for(content)
        server = self.server
        assert server is not None
        prepared = server.prepared
        if ours in prepared:
            prepared.move_to_end(ours)
        else:
            self._prepare(ours, content, _E_HIDDEN_PARSE)
        return ours

    def _bind(self, msg: bytes) -> None:
        start = self._start_batch()
        portal_end = msg.index(b"\0", 5)
        name_end = msg.index(b"\0", portal_end + 1)
        name = msg[portal_end + 1 : name_end]
        effect: Optional[StateEffect] = None
        if not name:
            effect = self._unnamed
        else:
            content = self.statements.get(name)
            if content is not None:
                effect = state_effect(m.decode(content[: content.index(b"\0")]))
        if effect is not None:
            self._unit.append(effect)
            if effect.sql:
                self._sql_sync(effect, start)
        if name and self.max_prepared:
            ours = self._ours(name)
            if ours is not None:
                body = msg[5 : portal_end + 1] + ours + msg[name_end:]
                msg = m.message(b"B", body)
        self._send(msg, _E_BIND)

    def _describe(self, msg: bytes) -> None:
        self._start_batch()
        name = msg[6:-1]
        if msg[5:6] == b"S" and name and self.max_prepared:
            ours = self._ours(name)
            if ours is not None:
                msg = m.message(b"D", b"S" + ours + b"\0")
        self._send(msg, _E_DESCRIBE)

    def _close(self, msg: bytes) -> None:
        self._start_batch()
        name = msg[6:-1]
        if msg[5:6] == b"S" and name and self.max_prepared:
            self.statements.pop(name, None)
            self._fake(_CLOSE_COMPLETE_MSG)
            return
        self._send(msg, _E_CLOSE)

    # -- server to client ---------------------------------------------------------------

    def feed_server(self, data: bytes) -> None:
        """The held server's chunk (``BackendProtocol`` calls its tracker)."""
        self.bytes_out += len(data)
        out = self._out
        expect = self._expect
        n = len(data)
        pos = 0
        run = -1  # start of bytes forwarded as they are
        if self._s_need:
            need = self._s_need
            self._s_body += data[:need]
            if n < need:
                self._s_need = need - n
                return
            self._s_need = 0
            body, self._s_body = self._s_body, b""
            self._body(self._s_kind, body)
            pos = need
        elif self._s_skip:
            take = min(self._s_skip, n)
            self._s_skip -= take
            pos = take
            if not self._s_skip and self._s_fakes:
                self._s_fakes = False
                if not self._s_drop:
                    out.append(data[:take])
                self._drain_fakes()
            elif not self._s_drop:
                run = 0
        elif self._s_head:
            cut = len(self._s_head)
            head = self._s_head + data[: 5 - cut]
            if len(head) < 5:
                self._s_head = head
                return
            self._s_head = b""
            pos = self._message(data, head, 0, 5 - cut, out)
        while 0 <= pos < n:
            if n - pos < 5:
                if run >= 0:
                    out.append(data[run:pos])
                    run = -1
                self._s_head = data[pos:]
                pos = n
                break
            kind = data[pos]
            if kind not in _NOT_PLAIN and not (expect and expect[0][0] >= _E_HIDDEN_PARSE):
                # The common message (a DataRow...): forwarded with its neighbours as
                # they came, settling nothing owed.
                if run < 0:
                    run = pos
                end = pos + 1 + _LENGTH(data, pos + 1)[0]
                if end > n:
                    self._s_skip = end - n
                    self._s_drop = False
                    pos = n
                    break
                pos = end
                continue
            if run >= 0:
                out.append(data[run:pos])
                run = -1
            pos = self._message(data, data, pos, pos + 5, out)
        if run >= 0:
            out.append(data[run:])
        self._flush()
        self._maybe_release()

    def _message(self, data: bytes, head: bytes, at: int, body_start: int, out: list[bytes]) -> int:
        """One server message whose header is ``head[at:at+5]`` and whose body starts at
        ``body_start`` in ``data`` (the header may have begun in the chunk before).
        Returns where the next message starts, or -1 when this one runs past the chunk."""
        kind = head[at]
        end = body_start - 4 + max(_LENGTH(head, at + 1)[0], 4)
        n = len(data)
        if kind in (_READY, _PARAMETER_STATUS):
            if end > n:
                self._s_kind = kind
                self._s_body = data[body_start:]
                self._s_need = end - n
                return -1
            self._body(kind, data[body_start:end])
            return end
        drop = self._settle(kind)
        if not drop:
            whole = data[at:end] if head is data else head[at : at + 5] + data[body_start:end]
            out.append(whole)
        if end > n:
            self._s_skip = end - n
            self._s_drop = drop
            self._s_fakes = True
            return -1
        self._drain_fakes()
        return end

    def _settle(self, kind: int) -> bool:
        """What a server message (not ReadyForQuery/ParameterStatus) settles of what the
        server owes; True when the client must not see it."""
        expect = self._expect
        if not expect:
            return False  # a notice or notification between statements
        head, detail = expect[0]
        if head == _E_HIDDEN_QUERY:
            if kind == _ERROR:
                self._failed = True
            return True
        if kind == _ERROR:
            if head in _SIMPLE:
                self._failed = True
                return False
            self._skip_to_sync(detail, head)
            return False
        if kind == _PARSE_COMPLETE:
            if head in (_E_PARSE, _E_HIDDEN_PARSE):
                if detail:
                    self.names.parsed.add(detail)
                expect.popleft()
                return head == _E_HIDDEN_PARSE
            return False
        if kind == _CLOSE_COMPLETE:
            if head in (_E_CLOSE, _E_HIDDEN_CLOSE):
                expect.popleft()
                return head == _E_HIDDEN_CLOSE
            return False
        if kind == _BIND_COMPLETE:
            if head == _E_BIND:
                expect.popleft()
            return False
        if kind in (_ROW_DESCRIPTION, _NO_DATA):
            if head == _E_DESCRIBE:
                expect.popleft()
            return False
        if kind in (_COMMAND_COMPLETE, _EMPTY_QUERY, _SUSPENDED):
            if head == _E_EXECUTE:
                expect.popleft()
            return False
        return False

    def _skip_to_sync(self, detail: Any, head: int) -> None:
        """An ErrorResponse in a batch: the server skips every message up to the Sync, so
        nothing they owed comes, and statements they would have parsed do not exist."""
        expect = self._expect
        server = self.server
        prepared = server.prepared if server is not None else None
        self._failed = True
        while expect and expect[0][0] not in _UNIT_ENDS:
            kind, detail = expect.popleft()
            if kind in (_E_PARSE, _E_HIDDEN_PARSE) and detail and prepared is not None:
                prepared.pop(detail, None)
        # Statements up to the error have answered; what follows the Sync is unaffected.

    def _drain_fakes(self) -> None:
        """The pooler's own answers now due, in their places."""
        expect = self._expect
        while expect and expect[0][0] == _E_FAKE:
            _, (reply, query) = expect.popleft()
            self._out.append(reply)
            if query:
                # A whole Query the pooler answered: its ReadyForQuery too.
                self._out.append(m.ready_for_query(self.status))
                self.pending -= 1

    def _body(self, kind: int, body: bytes) -> None:
        if kind == _PARAMETER_STATUS:
            server = self.server
            try:
                name, value = m.parse_parameter_status(body)
            except ProtocolViolation:
                name = ""
            if name and server is not None:
                server.params[name] = value
            expect = self._expect
            if not expect or expect[0][0] != _E_HIDDEN_QUERY:
                self._out.append(m.message(b"S", body))
            return
        status = body[0] if body else IDLE
        expect = self._expect
        if not expect:
            return  # a ReadyForQuery nobody asked for: the server is confused; drop it
        head, detail = expect.popleft()
        if head == _E_HIDDEN_QUERY:
            if self._failed and detail is not None and self.server is not None:
                self.sql.undo(self.server.sql_prepared, detail)
            self._failed = False
            self._drain_fakes()
            return
        # The end of a client's Query, Sync or FunctionCall.
        while head not in _UNIT_ENDS and expect:
            head, detail = expect.popleft()  # answers an error skipped
        self.status = status
        self.pending -= 1
        self.queries += 1
        if status == IDLE:
            self.xacts += 1
        self._unit_ended(detail, self._failed, head == _E_QUERY)
        self._failed = False
        self._out.append(m.message(b"Z", body))
        self._drain_fakes()

    def _unit_ended(
        self, effects: Optional[list[StateEffect]], failed: bool, query: bool = False
    ) -> None:
        """What the unit's statements left, now that the server answered them."""
        if not effects:
            return
        server = self.server
        alone = query and len(effects) == 1 and not effects[0].several
        if failed and not alone and PREPARED not in self.pinned:
            # What of a PREPARE or DEALLOCATE ran before the error is not known (only a
            # Query of one statement failed whole): the server is the truth now.
            for effect in effects:
                if any(verb != EXECUTE for verb, _, _ in effect.sql):
                    self.pinned[PREPARED] = True
                    break
        for effect in effects:
            if failed:
                continue
            if effect.pins and UNPARSED in effect.pins:
                # PostgreSQL parsed what pglast did not: take it as leaving state.
                self.pinned[UNPARSED] = True
            if effect.clears:
                self._clear(effect)
            for name, text in effect.replay:
                if text:
                    self.wanted[name] = text
                    if server is not None:
                        server.replayed[name] = text
                else:
                    self.wanted.pop(name, None)
                    if server is not None:
                        server.replayed.pop(name, None)
            if "" in effect.deallocate and server is not None:
                server.prepared.clear()
                self.statements.clear()
            if effect.sql and server is not None and PREPARED not in self.pinned:
                self.sql.done(server.sql_prepared, effect.sql)

    def _clear(self, effect: StateEffect) -> None:
        pinned = self.pinned
        server = self.server
        if ALL in effect.clears:
            pinned.clear()
            self.wanted.clear()
            self.statements.clear()
            self.sql.clear(server.sql_prepared if server is not None else None)
            if server is not None:
                # DISCARD ALL: settings back to the login's, every statement gone.
                server.replayed.clear()
                server.prepared.clear()
            return
        for reason in effect.clears:
            pinned.pop(reason, None)
            if reason == SET:
                # RESET ALL: replayable settings are back to the login's values too.
                self.wanted.clear()
                if server is not None:
                    server.replayed.clear()
            if reason == PREPARED and server is not None:
                # DEALLOCATE ALL: every statement gone, the pooler's and the client's.
                server.prepared.clear()
                self.sql.clear(server.sql_prepared)

    def _maybe_release(self) -> None:
        if (
            self.server is not None
            and not self._closed
            and not self._expect
            and not self._unsynced
            and self.status == IDLE
            and not self.pinned
            and not self._held
            and not self._s_skip
            and not self._s_head
            and not self._s_need
        ):
            self.owner.release_server()


#: Server messages read one by one (``TransactionStream._message``): what settles
#: something owed (``_settle``), and the two whose bodies are read.
_NOT_PLAIN = frozenset(
    (
        _READY,
        _PARAMETER_STATUS,
        _ERROR,
        _PARSE_COMPLETE,
        _BIND_COMPLETE,
        _CLOSE_COMPLETE,
        _ROW_DESCRIPTION,
        _NO_DATA,
        _COMMAND_COMPLETE,
        _EMPTY_QUERY,
        _SUSPENDED,
    )
)
