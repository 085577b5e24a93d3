"""Protocol-level named statements across servers: the pooler's name for each statement
text (``StatementNames``), and the Parse, Bind, Describe and Close of a transaction-mode
client rewritten to it, with hidden Parses where a server lacks one.

Each function here is a method of ``TransactionStream`` (stream.py assigns it in the
class body), kept in this file so that each file holds one concern."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from pgpool_tw.cluster.session_state import (
    StateEffect,
    state_effect,
)
from pgpool_tw.protocol import messages as m
from pgpool_tw.session.transaction.owed import (
    _CLOSE_COMPLETE_MSG,
    _E_BIND,
    _E_CLOSE,
    _E_DESCRIBE,
    _E_HIDDEN_CLOSE,
    _E_HIDDEN_PARSE,
    _E_PARSE,
    _PARSE_COMPLETE_MSG,
    _SYNC_MESSAGE,
    _split_parse,
    _text_of,
)

if TYPE_CHECKING:
    from pgpool_tw.session.transaction.stream import TransactionStream

#: The pin reason of a named protocol statement with max_prepared_statements = 0.
NAMED_STATEMENT = "named_statement"


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


def _answer_parse(self: TransactionStream, msg: bytes, buf: bytes | bytearray, end: int) -> bool:
    """A Parse and Sync alone (libpq's PQprepare) of a statement a server parsed
    before, from a client that holds no server: answered by the pooler.

    Why: pgbench -M prepared prepares synchronously, one client at a time per thread;
    if that waited for a server held by a client of the same thread mid-transaction,
    the thread would wait for ever.  The statement is prepared on whichever server
    the client's Bind reaches (an error it would raise comes there, not here).
    """
    if bytes(buf[end : end + 5]) != _SYNC_MESSAGE or not self.max_prepared:
        return False
    name, content = _split_parse(msg)
    if not name or not self.names.known(content):
        return False
    self._effect(_text_of(content))  # its pins, if any
    self.statements[name] = content
    self._out.append(_PARSE_COMPLETE_MSG + m.ready_for_query(self.status))
    return True


def _parse(self: TransactionStream, msg: bytes) -> None:
    name, content = _split_parse(msg)
    # Pins count from the Parse (the safe side); what a statement clears or replays
    # counts when a Bind runs it (psycopg prepares DEALLOCATE ALL before running it).
    start = self._start_batch()
    effect = self._effect(_text_of(content))
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
    if _place(self, content, _E_PARSE)[1]:
        self._fake(_PARSE_COMPLETE_MSG)  # the server has it: the pooler answers


def _place(self: TransactionStream, content: bytes, expect: int) -> tuple[bytes, bool]:
    """The pooler's name for ``content``, prepared on the server held now (a Parse sent,
    owing ``expect``, when it lacks it); and whether the server had it already."""
    ours = self.names.name_for(content)
    server = self.server
    assert server is not None
    prepared = server.prepared
    if ours in prepared:
        prepared.move_to_end(ours)
        return ours, True
    self._prepare(ours, content, expect)
    return ours, False


def _prepare(self: TransactionStream, ours: bytes, content: bytes, expect: int) -> None:
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


def _ours(self: TransactionStream, name: bytes) -> Optional[bytes]:
    """The pooler's name for the client's statement ``name``, prepared on the server
    held now; None when the client has no such statement (the server says so)."""
    content = self.statements.get(name)
    if content is None:
        return None
    return _place(self, content, _E_HIDDEN_PARSE)[0]


def _bind(self: TransactionStream, msg: bytes) -> None:
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
            effect = state_effect(_text_of(content))
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


def _describe(self: TransactionStream, msg: bytes) -> None:
    self._start_batch()
    name = msg[6:-1]
    if msg[5:6] == b"S" and name and self.max_prepared:
        ours = self._ours(name)
        if ours is not None:
            msg = m.message(b"D", b"S" + ours + b"\0")
    self._send(msg, _E_DESCRIBE)


def _close(self: TransactionStream, msg: bytes) -> None:
    self._start_batch()
    name = msg[6:-1]
    if msg[5:6] == b"S" and name and self.max_prepared:
        self.statements.pop(name, None)
        self._fake(_CLOSE_COMPLETE_MSG)
        return
    self._send(msg, _E_CLOSE)
