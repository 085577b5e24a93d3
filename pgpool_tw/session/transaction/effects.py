"""What a transaction-mode client's statements leave on their server session: pins taken
when sent, clears and replayed settings applied when answered without an error, SQL
prepared statements kept in step (sql_prepared.py).

Each function here is a method of ``TransactionStream`` (stream.py assigns it in the
class body), kept in this file so that each file holds one concern."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

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
from pgpool_tw.session.transaction.owed import (
    _BIND,
    _DEALLOCATE_DONE,
    _E_QUERY,
    _FAILED,
    _PARSE,
    _QUERY,
    IDLE,
    _split_parse,
    _text_of,
)

if TYPE_CHECKING:
    from pgpool_tw.session.transaction.stream import TransactionStream

#: Effects of Query texts by the C loop's shape key (``_shape.c``: literals as placeholder
#: bytes; equal keys normalize alike), for effects every text of the shape shares: a
#: pgbench -S query is then one dict lookup, with no decoding and no parse.
_BY_SHAPE: dict[bytes, StateEffect] = {}
_BY_SHAPE_MAX = 10000
#: The same keys for the C lane (engine/_txlane.c), those of texts that leave nothing
#: (-> 1): one dict for the process, which every lane holds and only this file fills.
FAST_SHAPES: dict[bytes, int] = {}
_shape_key = speedups.shape_key if speedups is not None else None


def statement_text(self: TransactionStream, msg: bytes) -> Optional[str]:
    """The text a transaction's first message runs (a Query's, a Parse's, a named
    statement's Bind), for routing; None when it names none."""
    kind = msg[0]
    if kind == _QUERY:
        return m.decode(msg[5:-1])
    if kind == _PARSE:
        return _text_of(_split_parse(msg)[1])
    if kind == _BIND:
        portal_end = msg.index(b"\0", 5)
        name = msg[portal_end + 1 : msg.index(b"\0", portal_end + 1)]
        content = self.statements.get(name) if name else None
        if content is not None:
            return _text_of(content)
    return None


def _effect(self: TransactionStream, text: str) -> StateEffect:
    effect = state_effect(text)
    self._pin(effect)
    return effect


def _pin(self: TransactionStream, effect: StateEffect) -> None:
    """What a statement pins counts from the moment it is sent (the safe side)."""
    if effect.pins:
        for reason in effect.pins:
            if reason != UNPARSED:
                self.pinned[reason] = True
    if effect.replay and self.status != IDLE:
        # Inside a transaction block the SET may yet be rolled back: keep the server.
        self.pinned[SET] = True


def _query(self: TransactionStream, msg: bytes) -> None:
    key = _shape_key(memoryview(msg)[5:-1]) if _shape_key is not None else None
    effect = _BY_SHAPE.get(key) if key is not None else None
    if effect is None:
        effect, shared = shaped_effect(m.decode(msg[5:-1]))
        if shared and key is not None:
            if len(_BY_SHAPE) >= _BY_SHAPE_MAX:
                _BY_SHAPE.clear()
                FAST_SHAPES.clear()
            _BY_SHAPE[key] = effect
            if effect is NOTHING:
                FAST_SHAPES[key] = 1
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


def _start_batch(self: TransactionStream) -> bool:
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


def _sql_on(self: TransactionStream) -> bool:
    """Hidden SQL-statement work may be done: not while a failed text left the
    server's names unknown (the client is pinned there: the server is the truth), nor
    in a failed transaction block (it would fail, as the client's statement will)."""
    return PREPARED not in self.pinned and self.status != _FAILED


def _sql_sync(self: TransactionStream, effect: StateEffect, start: bool) -> None:
    """Before a statement that uses SQL prepared names: the server's made the
    client's, when hidden statements may go first; the pins of what it EXECUTEs."""
    server = self.server
    assert server is not None
    if start and self._sql_on():
        self._hidden(self.sql.sync_uses(server.sql_prepared, effect.sql))
    for reason in self.sql.runs(effect.sql):
        self.pinned[reason] = True


def _sql_answer(self: TransactionStream, effect: StateEffect, start: bool) -> bool:
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


def _unit_ended(
    self: TransactionStream,
    effects: Optional[list[StateEffect]],
    failed: bool,
    query: bool = False,
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


def _clear(self: TransactionStream, effect: StateEffect) -> None:
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
