"""One client's stream spread over the primary and a load-balancing node, as one server.

A routed session holds a server connection per node it uses (pgpool-II's child holds
one per valid backend): the primary, which takes every write and whose login the client
saw, and the session's load-balancing node, chosen at session start.  ``RoutedStream``
is the sans-I/O heart of such a session: client bytes in, bytes out to each leg; server
bytes in per leg, bytes out to the client.  It frames every message (unlike the plain
relay, which only walks headers), because it must read query texts and merge replies.

The client must see what one server would send:

* Every Query, Sync-ended batch and FunctionCall is a *unit*, sent to one leader leg
  (and, for session state, to the other legs too).  Replies reach the client in the
  order the client sent its units, whichever leg answers first; only the leader's reply
  is forwarded, the others' are read and dropped.  A unit ends when every leg it went
  to has sent its ReadyForQuery; the leader's is forwarded then.
* A statement that provably only reads goes to the load-balancing node when the
  session's rules allow it (``_read_leg``): same transaction state on both legs,
  nothing in flight on the primary, no write earlier in the transaction
  (``disable_load_balance_on_write``), no temp table of the session, and, with
  read_your_writes, a node that has replayed the session's last commit.
* Session state (SET, BEGIN/COMMIT, PREPARE, DEALLOCATE, named extended-protocol
  statements) reaches every leg.  A transaction that failed on the leg that answered the
  client is *aborted*: its statements go to that leg, which refuses them as one server
  would, and its end goes to every leg, a COMMIT becoming ROLLBACK where the transaction
  did not fail (one server would roll it back too).
* ParameterStatus reaches the client from the primary only; every leg's parameters are
  kept up to date for the pool.

On the C loop a router (``engine/_route.c``) takes the simple Queries of a known shape
by a table of this stream's own states (``rearm``, ``_automaton``), moves from state to
state as their answers end (``_sync`` takes the state it reached), and hands back
(``adopt``) any statement it cannot finish alone; see docs/ARCHITECTURE.md section 2a,
step 4a.

What it does not do yet: a Sync-ended batch is routed as a whole, decided from the
messages already received when it starts; a batch that starts reading on the
load-balancing node and later (after a Flush round trip) asks for a write gets the
standby's refusal.  Flow control covers the primary's leg only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from struct import Struct
from typing import Any, Optional, Protocol, overload

from pgpool_tw.cluster.classify import (
    ROUTE_ALL,
    ROUTE_LOCAL,
    ROUTE_PRIMARY,
    ROUTE_STANDBY,
    Verdict,
)
from pgpool_tw.cluster.pgpool_sql import LocalCommand
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.extended import (
    batch_messages,
    bind_names,
    parse_fields,
    reparse,
)
from pgpool_tw.protocol.rows import first_lsn
from pgpool_tw.session.legs import Batch, Leg, Unit

__all__ = [
    "FAST_BEGIN",
    "FAST_COMMIT",
    "FAST_PRIMARY",
    "FAST_READ",
    "FAST_WRITE",
    "FastRoute",
    "RoutedStream",
    "RoutingRules",
    "fast_class",
]

_LENGTH = Struct("!I").unpack_from

IDLE, IN_TX, FAILED = m.IDLE, m.IN_TRANSACTION, m.IN_FAILED_TRANSACTION

# Client message types.
_QUERY, _PARSE, _BIND, _DESCRIBE, _EXECUTE = ord("Q"), ord("P"), ord("B"), ord("D"), ord("E")
_CLOSE, _FLUSH, _SYNC, _FUNCTION_CALL, _TERMINATE = ord("C"), ord("H"), ord("S"), ord("F"), ord("X")
_COPY_DATA, _COPY_DONE, _COPY_FAIL = ord("d"), ord("c"), ord("f")
_EXTENDED = frozenset((_PARSE, _BIND, _DESCRIBE, _EXECUTE, _CLOSE, _FLUSH, _SYNC))
# Server message types.
_READY, _PARAMETER_STATUS, _ERROR, _DATA_ROW = ord("Z"), ord("S"), ord("E"), ord("D")

#: The largest message PostgreSQL itself accepts (its MaxAllocSize).
_MAX_MESSAGE = 0x3FFFFFFF

_SYNC_MESSAGE = b"S\x00\x00\x00\x04"
_CURRENT_LSN = m.query("SELECT pg_current_wal_insert_lsn()")
_REPLAYED_LSN = m.query("SELECT pg_last_wal_replay_lsn()")
#: A statement the session never saw parsed: taken as a write.
_UNKNOWN = Verdict(ROUTE_PRIMARY, write=True)

#: Classes of statements the C loop may route itself (engine/_route.c): a plain read, a
#: plain write, a plain statement for the primary, a COMMIT, a BEGIN.  Python maps a
#: text's shape key to one once it classified a text of that shape, and hands the loop a
#: table of where each class goes from each of the session's states
#: (``RoutedStream.rearm``, ``_automaton``).
FAST_READ, FAST_WRITE, FAST_PRIMARY, FAST_COMMIT = 1, 2, 3, 4
#: BEGIN texts are classes FAST_BEGIN + k, k indexing ``RoutingRules.begins`` (the
#: router cannot tell Python which BEGIN it sent otherwise; pgpool-II's deferred BEGIN
#: replays the client's own text on the standby).
FAST_BEGIN = 8
FAST_CLASSES = 16
#: States of the router's table (``RoutedStream._automaton``) at the most.
FAST_STATES = 16
_PLAIN_READ = Verdict(ROUTE_STANDBY)
_PLAIN_WRITE = Verdict(ROUTE_PRIMARY, write=True)
_BEGIN = Verdict(ROUTE_ALL, tx="begin")
_COMMIT = Verdict(ROUTE_ALL, tx="commit")


def fast_class(verdict: Verdict) -> int:
    """The class of a statement whose effect on the session Python can foresee
    (``RoutedStream._fast_step``); 0 when Python must see every such statement.

    A BEGIN or COMMIT (``FAST_BEGIN``, ``FAST_COMMIT``) qualifies only as a text without
    literals: its shape key is then the text itself (the caller checks)."""
    if verdict == _BEGIN:
        return FAST_BEGIN
    if verdict == _COMMIT:
        return FAST_COMMIT
    if (
        not verdict.shaped
        or verdict.tx
        or verdict.desync
        or verdict.temp_created
        or verdict.local
        or verdict.prepare_name
        or verdict.execute_name
        or verdict.deallocate_name
        or verdict.inner is not None
    ):
        return 0
    if verdict.route == ROUTE_STANDBY:
        return FAST_READ
    if verdict.route == ROUTE_PRIMARY:
        return FAST_WRITE if verdict.write else FAST_PRIMARY
    return 0


class FastRoute(Protocol):
    """What the stream asks of the C loop's router of its session (engine/_route.c)."""

    busy: int
    state: int
    moves: int

    def arm(self, table: bytes, states: int) -> None: ...

    def disarm(self) -> None: ...

    def take_counts(self) -> tuple[int, int, int, int, int, int]: ...


class RoutingRules:
    """The session's settings and the cluster's answers, as the stream asks for them.

    Plain attributes and callables, so a test can build one without a cluster.
    """

    __slots__ = (
        "classify",
        "local",
        "lb_readable",
        "lb_replayed",
        "on_write_mode",
        "read_your_writes",
        "on_select",
        "log_statement",
        "per_statement",
        "learn",
        "begins",
        "automata",
        "key",
    )

    def __init__(
        self,
        classify: Callable[[str], Verdict],
        local: Callable[[LocalCommand, int], bytes],
        lb_readable: Callable[[], bool] = lambda: True,
        lb_replayed: Callable[[], int] = lambda: 0,
        on_write_mode: str = "transaction",
        read_your_writes: bool = True,
        on_select: Callable[[int, int], None] = lambda node, count: None,
        log_statement: Optional[Callable[[str, list[tuple[int, int]]], None]] = None,
        per_statement: Optional[Callable[[], bool]] = None,
        learn: Optional[Callable[[bytes, int, bool], bool]] = None,
        begins: Optional[list[bytes]] = None,
        automata: Optional[dict[Any, Any]] = None,
        key: object = None,
    ) -> None:
        self.classify = classify
        #: local(command, status) -> the pooler's own answer, ReadyForQuery included.
        self.local = local
        #: The load-balancing node is up and not over delay_threshold.
        self.lb_readable = lb_readable
        #: The load-balancing node's replayed LSN as last checked (0: unknown).
        self.lb_replayed = lb_replayed
        self.on_write_mode = on_write_mode
        self.read_your_writes = read_your_writes
        #: on_select(node, count): reads sent to a node (SHOW pool_nodes' select_cnt).
        self.on_select = on_select
        #: log_statement / log_per_node_statement (session/logs.py): (text, [(node, server
        #: pid) of each leg it goes to]) for each statement.
        self.log_statement = log_statement
        #: statement_level_load_balance: True when this read goes to the load-balancing
        #: node (by weight, against the primary), asked per statement.
        self.per_statement = per_statement
        #: learn(query message, class, literals too): the C loop may route texts of
        #: this one's shape (False: it has no such key; None: the loop routes nothing,
        #: e.g. under primary_routing_query_pattern_list, whose patterns read constants).
        self.learn = learn
        #: The BEGIN texts the router knows, FAST_BEGIN + index each; only ever
        #: appended to (routers' tables name them by index).
        self.begins = begins if begins is not None else []
        #: The routers' tables computed so far, shared by the sessions whose rules
        #: have the same ``key`` (the cluster's changes empty it).
        self.automata: dict[Any, Any] = automata if automata is not None else {}
        self.key = key

    def begin_class(self, msg: bytes) -> int:
        """The class of this BEGIN text (0: too many kinds of BEGIN already)."""
        begins = self.begins
        if msg not in begins:
            if len(begins) == FAST_CLASSES - FAST_BEGIN:
                return 0
            begins.append(msg)
        return FAST_BEGIN + begins.index(msg)


class RoutedStream:
    """The client's stream over a primary leg and optionally a load-balancing leg."""

    #: Its ``feed_client`` stops only at a Terminate (the glue reads it as a tracker's).
    local = False

    def __init__(
        self,
        primary: Leg,
        lb: Optional[Leg],
        client_send: Callable[[bytes], None],
        rules: RoutingRules,
        broken: Callable[[str], None] = lambda why: None,
    ) -> None:
        self.primary = primary
        self.lb = lb if lb is not primary else None
        self.legs = [primary] if self.lb is None else [primary, self.lb]
        for leg in self.legs:
            leg.stream = self
        self.client_send = client_send
        self.rules = rules
        #: The client's stream cannot be framed: the session ends it (08P01).
        self.broken = broken
        self._cbuf = bytearray()
        self._queue: deque[Unit] = deque()
        self._out: list[bytes] = []
        self._batch: Optional[Batch] = None
        self._copy_leg: Optional[Leg] = None
        #: The leg whose transaction failed where the client saw it.
        self.aborted: Optional[Leg] = None
        #: Session state changed on the primary only: no more load balancing.
        self.desynced = False
        self._wrote_in_tx = False
        self._wrote_in_a_tx = False  # trans_transaction
        self._wrote = False  # always
        self._dirty = False  # a write sent since the last commit was seen
        #: A write committed whose WAL position is not known yet (read-your-writes asks
        #: the primary only when a read would otherwise go to the standby).
        self._unreplicated = False
        self._lsn_pending = False
        #: A BEGIN the load-balancing leg has not been sent: it joins the transaction
        #: only when a read or session state needs it there (a writing transaction
        #: never waits on the standby).
        self._lb_begin: Optional[bytes] = None
        #: A read of the open transaction went to the primary.
        self._tx_on_primary = False
        #: dml_adaptive: the tables the open transaction wrote, or a write of unknown target.
        self._tx_written: set[str] = set()
        self._tx_wrote_unknown = False
        #: A BEGIN was sent and no idle ReadyForQuery has come since.
        self._begun = False
        self.write_lsn = 0
        self._lb_replayed = 0
        self._temps: set[str] = set()
        self._statements: dict[bytes, Verdict] = {}
        self._prepared: dict[str, Verdict] = {}
        self._unnamed: tuple[Optional[Verdict], list[Leg]] = (None, [primary])
        self._portals: dict[bytes, list[Leg]] = {}
        # Counters, as the plain tracker keeps them (stats/counters.py harvests them).
        self.queries = 0
        self.xacts = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: The C loop's router of this session, when it has one (the glue sets it).
        self.fast: Optional[FastRoute] = None
        #: The router was last armed (not disarmed).
        self._armed = False
        #: The states of the router's table and its moves when it was armed.
        self._fast_states: list[tuple[object, ...]] = []
        self._fast_moves = 0
        #: The classes of statement this session sent (the router's table covers these;
        #: none: the session never sent a simple Query the router could take).
        self._kinds: tuple[int, ...] = ()

    # -- what the session and the glue read, as of the plain tracker -----------------

    @property
    def status(self) -> int:
        self._sync()
        return self.primary.status if self.aborted is None else FAILED

    @property
    def pending(self) -> int:
        fast = self.fast
        return len(self._queue) + (fast is not None and fast.busy >= 0)

    @property
    def in_sync(self) -> bool:
        self._sync()
        fast = self.fast
        return (
            not self._queue
            and self._batch is None
            and not self._cbuf
            and all(leg.in_sync for leg in self.legs)
            and (fast is None or fast.busy < 0)
        )

    @property
    def server_at_boundary(self) -> bool:
        return True  # only whole messages are ever sent to the client

    def take_counts(self) -> tuple[int, int, int, int]:
        if self.fast is not None:
            self._sync()
            self._fold_counts(self.fast)
        counts = (self.queries, self.xacts, self.bytes_in, self.bytes_out)
        self.queries = self.xacts = self.bytes_in = self.bytes_out = 0
        return counts

    def _fold_counts(self, fast: FastRoute) -> None:
        """What the router counted becomes the stream's (reads per node at once)."""
        queries, xacts, bytes_in, bytes_out, *reads = fast.take_counts()
        self.queries += queries
        self.xacts += xacts
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        for leg, count in zip(self.legs, reads):
            if count:
                self.rules.on_select(leg.node, count)

    def detach_fast(self) -> None:
        """The router let the session's sockets go: its counts are kept, the router is
        not (the two refer to each other)."""
        self._sync()
        fast, self.fast = self.fast, None
        if fast is not None:
            self._fold_counts(fast)

    def waiting_on(self) -> list[Leg]:
        """The legs that owe the client an answer (a CancelRequest goes to them)."""
        fast = self.fast
        busy = fast.busy if fast is not None else -1
        return [
            leg
            for index, leg in enumerate(self.legs)
            if index == busy or any(unit.client for unit in leg.units)
        ]

    # -- the C loop's router ----------------------------------------------------------

    def adopt(self, index: int, raw_left: int, kind: int) -> None:
        """The C loop hands over a statement of class ``kind`` it sent to leg ``index``
        (0: the primary) from its current state: queued as if sent here, with what
        sending it changed; ``raw_left`` bytes of the answer's current message go to the
        client as they come, the rest is read as usual."""
        self._sync()
        self._armed = False  # the router disarmed itself
        leg = self.legs[index] if index < len(self.legs) else self.primary
        self._fast_step(kind)
        unit = Unit(leg)
        unit.tx = "begin" if kind >= FAST_BEGIN else "commit" if kind == FAST_COMMIT else ""
        self._queue.append(unit)
        unit.expect(leg)
        self._copy_leg = leg
        leg.raw_left = raw_left

    def _sync(self) -> None:
        """Take the state the router moved the session to (its table's states are
        snapshots of this stream's, ``_automaton``)."""
        fast = self.fast
        if fast is not None and fast.moves != self._fast_moves:
            self._fast_moves = fast.moves
            self._restore(self._fast_states[fast.state])

    def rearm(self) -> None:
        """Hand the router its table for the session's state now, or disarm it while
        Python must see every statement (a unit in flight, a failed transaction, a
        batch, statements logged).

        Cheap while a unit is in flight (the router is disarmed once), and nothing at
        all in a session that never sent a simple Query the router could take (an
        extended-protocol client)."""
        fast = self.fast
        if fast is None or not self._kinds:
            return
        self._sync()
        if fast.busy >= 0:
            # Its statement ends by the old table; Python takes the next one and arms
            # the router again then.
            fast.disarm()
            self._armed = False
            return
        if self._queue:
            if self._armed:
                fast.disarm()
                self._armed = False
            return
        if not self._armable():
            fast.disarm()
            self._armed = False
            return
        states, table = self._automaton()
        self._fast_states = states
        self._fast_moves = fast.moves
        self._armed = True
        fast.arm(table, len(states))

    def _armable(self) -> bool:
        """Nothing in flight, no failed transaction, no batch, no statement logged: the
        router may take statements from this state."""
        primary, lb = self.primary, self.lb
        return not (
            self._queue
            or self._batch is not None
            or self._cbuf
            or self.aborted is not None
            or self.rules.log_statement is not None
            or primary.units
            or primary.buf
            or primary.raw_left
            or (lb is not None and not (lb.in_sync and not lb.raw_left))
        )

    # -- what the router may do: a table of this stream's own states ------------------

    #: The fields a class of statement changes (``_fast_step``, ``_ended``).
    _MOVED = (
        "_wrote_in_tx",
        "_wrote_in_a_tx",
        "_wrote",
        "_dirty",
        "_unreplicated",
        "_lb_begin",
        "_tx_on_primary",
        "_begun",
        "_tx_wrote_unknown",
    )

    def _snapshot(self) -> tuple[object, ...]:
        lb = self.lb
        moved = tuple(getattr(self, name) for name in self._MOVED)
        # What the rules read besides: a state is the same only if these are too.
        read = (self.desynced, self.write_lsn, self._lb_replayed, frozenset(self._temps))
        status = (self.primary.status, lb.status if lb is not None else -1)
        return (*status, frozenset(self._tx_written), *moved, *read)

    def _restore(self, state: tuple[object, ...]) -> None:
        self.primary.status = state[0]  # type: ignore[assignment]
        if self.lb is not None:
            self.lb.status = state[1]  # type: ignore[assignment]
        self._tx_written = set(state[2])  # type: ignore[call-overload]
        for name, value in zip(self._MOVED, state[3:]):
            setattr(self, name, value)

    def _fast_step(self, kind: int) -> Optional[tuple[Leg, int]]:
        """Send a statement of class ``kind`` in thought: where it goes and the status
        its answer must end with, with what sending it changes; None where Python must
        see it.  The same code the stream runs for such a statement."""
        primary = self.primary
        if kind == FAST_READ:
            leg = self._read_leg(_PLAIN_READ, dry=True)
            return None if leg is None else (leg, leg.status)
        if kind == FAST_PRIMARY:
            return primary, primary.status
        if kind == FAST_WRITE:
            if self.rules.on_write_mode == "dml_adaptive":
                return None  # the tables it writes decide later reads
            self._note_sent(primary, _PLAIN_WRITE)
            return primary, primary.status
        if kind == FAST_COMMIT:
            if primary.status != IN_TX:
                return None
            leader, others = self._all_legs(_COMMIT)
            return (primary, IDLE) if leader is primary and not others else None
        index = kind - FAST_BEGIN
        begins = self.rules.begins
        if not 0 <= index < len(begins):
            return None
        # Deferred (the standby joins when a read needs it), or the primary's alone (no
        # standby to join); _all_legs only looks while no BEGIN waits to be replayed.
        if self._defer_begin(_BEGIN, begins[index]) or (
            self._lb_begin is None and self._all_legs(_BEGIN) == (primary, [])
        ):
            self._note_sent(primary, _BEGIN)
            return primary, IN_TX
        return None

    def _automaton(self) -> tuple[list[tuple[object, ...]], bytes]:
        """The router's table: from the state now, for each class of statement this
        session has sent, the leg, the status its answer must end with and the state it
        leads to; every state reached, up to FAST_STATES.  Cached for every session of
        the same rules (``RoutingRules.automata``, emptied when the cluster changes).

        The table is bytes: per state and class, leg + 1 (0: Python's), status, next."""
        start = self._snapshot()
        key = (self.rules.key, self._kinds, start)
        automata = self.rules.automata
        cached = automata.get(key)
        if cached is not None:
            return cached
        states = [start]
        index = {start: 0}
        table = bytearray(FAST_STATES * FAST_CLASSES * 3)
        at = 0
        while at < len(states):
            for kind in self._kinds:
                self._restore(states[at])
                step = self._fast_step(kind)
                if step is None:
                    continue
                leg, status = step
                leg.status = status
                self._ended(leg)
                after = self._snapshot()
                to = index.get(after)
                if to is None:
                    if len(states) == FAST_STATES:
                        continue
                    to = index[after] = len(states)
                    states.append(after)
                cell = (at * FAST_CLASSES + kind) * 3
                table[cell : cell + 3] = bytes((self.legs.index(leg) + 1, status, to))
            at += 1
        self._restore(start)
        if len(automata) >= 256:
            automata.clear()
        result = (states, bytes(table))
        automata[key] = result
        return result

    def drop_leg(self, leg: Leg, idle_only: bool = False) -> bool:
        """Forget a load-balancing leg whose server went away (or whose node was detached:
        ``idle_only``, when its transaction must not be cut); False if it owed answers."""
        self._sync()
        if leg is self.primary or leg.units or (idle_only and leg.status != m.IDLE):
            return False
        fast = self.fast
        if fast is not None and fast.busy == self.legs.index(leg):
            return False  # the router sent it a statement: its answer is owed
        self.lb = None
        self.legs = [self.primary]
        leg.stream = None
        return True

    # -- client to servers ---------------------------------------------------------------

    def feed_client(self, data: bytes) -> int:
        """Route a client chunk; return 0 when it held a Terminate (never forwarded), else -1."""
        if self.fast is None:
            return self._feed_client(data)
        self._sync()
        result = self._feed_client(data)
        self.rearm()
        return result

    def _feed_client(self, data: bytes) -> int:
        size = len(data)
        self.bytes_in += size
        if (
            size > 5
            and data[0] == _QUERY
            and not self._cbuf
            and _LENGTH(data, 1)[0] + 1 == size
            and self._batch is None
        ):
            # The common chunk: one whole Query, routed with no framing loop.
            self._query(data)
            self._flush_legs()
            if self._out:
                out, self._out = self._out, []
                self.client_send(b"".join(out))
            return -1
        buf: bytes | bytearray
        if self._cbuf:
            buf = self._cbuf
            buf += data
        else:
            buf = data  # the common case: whole messages, never copied
        pos = 0
        size = len(buf)
        terminated = False
        try:
            while size - pos >= 5:
                length = _LENGTH(buf, pos + 1)[0]
                if length < 4 or length > _MAX_MESSAGE:
                    raise _Broken(f"invalid message length {length}")
                end = pos + 1 + length
                if end > size:
                    break
                kind = buf[pos]
                if kind == _TERMINATE:
                    terminated = True
                    pos = size
                    break
                self._client_message(kind, bytes(buf[pos:end]), buf, end)
                pos = end
        except (_Broken, ValueError, IndexError) as e:
            # A length out of range, or a Parse/Bind/Describe body without its strings.
            self._cbuf = bytearray()
            self._flush_legs()
            self.broken(str(e) if isinstance(e, _Broken) else "malformed message")
            return -1
        if buf is self._cbuf:
            del buf[:pos]
        elif pos < size:
            self._cbuf = bytearray(buf[pos:])
        self._flush_legs()
        if self._out:
            out, self._out = self._out, []
            self.client_send(b"".join(out))
        return 0 if terminated else -1

    def _flush_legs(self) -> None:
        for leg in self.legs:
            if leg.sent:
                data = b"".join(leg.sent) if len(leg.sent) > 1 else leg.sent[0]
                leg.sent = []
                leg.send(data)

    def _client_message(self, kind: int, msg: bytes, buf: bytes | bytearray, after: int) -> None:
        if kind == _QUERY:
            self._query(msg)
        elif kind in _EXTENDED:
            self._extended(kind, msg, buf, after)
        elif kind in (_COPY_DATA, _COPY_DONE, _COPY_FAIL):
            leg = self._copy_leg or self.primary
            leg.sent.append(msg)
        elif kind == _FUNCTION_CALL:
            self._send_unit(self._leg_for_write(), [], msg, None)
        else:
            # Unknown to the protocol: the primary answers it as a server would.
            self.primary.sent.append(msg)

    # -- simple query ------------------------------------------------------------------

    def _query(self, msg: bytes) -> None:
        if self._batch is not None:
            # A Query inside an open batch: the batch's leader answers it.
            unit = self._batch.unit
            unit.leader.sent.append(msg)
            unit.expect(unit.leader)
            return
        text = msg[5:-1].decode("utf-8", "replace")
        verdict = self.rules.classify(text)
        route = verdict.route
        learn = self.rules.learn
        if learn is not None:
            kind = fast_class(verdict)
            if kind >= FAST_BEGIN:
                kind = self.rules.begin_class(msg)
            if kind and learn(msg, kind, kind < FAST_COMMIT) and kind not in self._kinds:
                self._kinds = tuple(sorted((*self._kinds, kind)))
        if verdict.execute_name:
            inner = self._prepared.get(verdict.execute_name)
            if inner is not None and inner.route == ROUTE_STANDBY:
                verdict = inner
                route = ROUTE_STANDBY
        if route == ROUTE_LOCAL and verdict.local is not None:
            self._local(verdict.local)
            return
        self._remember(verdict)
        if route == ROUTE_ALL:
            if self._defer_begin(verdict, msg):
                self._send_unit(self.primary, [], msg, verdict)
                self._log(text, self.primary)
                return
            leader, others = self._all_legs(verdict)
            rollback = m.query("ROLLBACK")
            copies = [rollback if self._must_roll_back(leg, verdict) else msg for leg in others]
            if self._must_roll_back(leader, verdict):
                msg = rollback
            self._send_unit(leader, list(zip(others, copies)), msg, verdict)
            self._log(text, leader, *others)
            return
        leader = self._read_leg(verdict) if route == ROUTE_STANDBY else self._leg_for_write()
        self._send_unit(leader, [], msg, verdict)
        if self.rules.log_statement is not None:
            self._log(text, leader)

    def _send_unit(
        self,
        leader: Leg,
        others: list[tuple[Leg, bytes]],
        msg: bytes,
        verdict: Optional[Verdict],
    ) -> Unit:
        unit = Unit(leader)
        if verdict is not None:
            unit.tx = verdict.tx
            self._note_sent(leader, verdict)
        self._queue.append(unit)
        leader.sent.append(msg)
        unit.expect(leader)
        for leg, copy in others:
            leg.sent.append(copy)
            unit.expect(leg)
        self._copy_leg = leader
        return unit

    def _note_sent(self, leader: Leg, verdict: Verdict) -> None:
        if verdict.tx == "begin":
            self._begun = True
        if verdict.write:
            self._wrote_in_tx = self._wrote = self._dirty = True
            if verdict.writes_to:
                # Unqualified: ``public.a`` and ``a`` may be one table (conservative).
                self._tx_written.update(name.rsplit(".", 1)[-1] for name in verdict.writes_to)
            else:
                self._tx_wrote_unknown = True
            if self.primary.status == IN_TX:
                self._wrote_in_a_tx = True
        if verdict.route == ROUTE_STANDBY:
            self.rules.on_select(leader.node, 1)

    def _remember(self, verdict: Verdict) -> None:
        """What a statement tells the session about its future reads."""
        if verdict.temp_created:
            self._temps.update(verdict.temp_created)
        if verdict.desync:
            self.desynced = True
        if verdict.prepare_name and verdict.inner is not None:
            self._prepared[verdict.prepare_name] = verdict.inner
        if verdict.deallocate_name:
            if verdict.deallocate_name == "*":
                self._prepared.clear()
            else:
                self._prepared.pop(verdict.deallocate_name, None)

    def _log(self, text: str, *legs: Leg) -> None:
        log = self.rules.log_statement
        if log is not None:
            log(text, [(leg.node, leg.pid) for leg in legs])

    def _local(self, command: LocalCommand) -> None:
        unit = Unit(self.primary)
        unit.held.append(self.rules.local(command, self.status))
        self._queue.append(unit)
        self._complete()

    # -- where statements go -----------------------------------------------------------

    def _leg_for_write(self) -> Leg:
        return self.aborted if self.aborted is not None else self.primary

    def _defer_begin(self, verdict: Verdict, msg: bytes) -> bool:
        """A BEGIN outside any transaction goes to the primary only; the load-balancing
        leg gets it when it is first needed in the transaction (``_join_lb``)."""
        lb = self.lb
        if (
            verdict.tx != "begin"
            or lb is None
            or self.desynced
            or self.aborted is not None
            or self.primary.status != IDLE
            or lb.status != IDLE
            or lb.units
            or self._lb_begin is not None
        ):
            return False
        self._lb_begin = msg
        return True

    def _all_legs(self, verdict: Verdict) -> tuple[Leg, list[Leg]]:
        """Session state: the leader, and the other legs that must see it too.

        The end of a transaction the load-balancing leg never joined is the primary's
        alone; any other session state makes it join first, so it mirrors the session.
        """
        aborted = self.aborted
        if aborted is not None and verdict.tx not in ("commit", "rollback", "rollback_to"):
            return aborted, []  # refused where the transaction failed, changes nothing
        lb = self.lb
        if lb is None or self.desynced:
            return self.primary, []
        if self._lb_begin is not None:
            if verdict.tx in ("commit", "rollback"):
                self._lb_begin = None
                return self.primary, []
            self._join_lb()
        elif verdict.tx in ("commit", "rollback") and lb.status == IDLE and not lb.units:
            return self.primary, []  # it had no part in the transaction (BEGIN SERIALIZABLE)
        return self.primary, [lb]

    def _must_roll_back(self, leg: Leg, verdict: Verdict) -> bool:
        """A COMMIT of a failed transaction, sent where it did not fail, must not commit."""
        return verdict.tx == "commit" and self.aborted is not None and leg is not self.aborted

    @overload
    def _read_leg(self, verdict: Verdict) -> Leg: ...

    @overload
    def _read_leg(self, verdict: Verdict, dry: bool) -> Optional[Leg]: ...

    def _read_leg(self, verdict: Verdict, dry: bool = False) -> Optional[Leg]:
        """Where a statement that only reads goes now (pgpool-II's load-balance rules).

        ``dry``: where it would go, with nothing sent or changed; None when deciding
        would send or change something (the stream's ``rearm`` asks for the C loop).
        """
        if self.aborted is not None:
            return self.aborted
        leg = self._balanced(verdict, dry)
        if leg is None:
            return None
        if leg is self.primary and (self.primary.status == IN_TX or self._begun):
            # The transaction has read the primary: the rest of it does too, so it never
            # sees older data than it already saw.  A dry run may note it ahead of the
            # read only where every read stays there anyway.
            if dry and not self._tx_on_primary and not self._stuck_on_primary():
                return None
            self._tx_on_primary = True
        return leg

    def _stuck_on_primary(self) -> bool:
        """Every read goes to the primary until the open transaction (or the session)
        ends, whatever it reads (``disable_load_balance_on_write``, desynced state)."""
        if self.lb is None or self.desynced:
            return True
        mode = self.rules.on_write_mode
        if mode == "always":
            return self._wrote
        if self.primary.status == IDLE or mode == "off":
            return False
        if mode == "trans_transaction" and self._wrote_in_a_tx:
            return True  # a transaction wrote: no later transaction balances either
        return self._wrote_in_tx and (mode != "dml_adaptive" or self._tx_wrote_unknown)

    def _balanced(self, verdict: Verdict, dry: bool = False) -> Optional[Leg]:
        primary, lb = self.primary, self.lb
        if lb is None or primary.units or self._stuck_on_primary():
            return primary
        if primary.status == IN_TX and self._tx_on_primary:
            return primary
        joining = (
            self._lb_begin is not None
            and lb.status == IDLE
            and primary.status == IN_TX
            and not lb.units
        )
        if lb.status != primary.status and not joining:
            return primary
        if (
            self.rules.on_write_mode == "dml_adaptive"
            and primary.status != IDLE
            and self._wrote_in_tx
        ):
            # The other modes are _stuck_on_primary's: here only reads of the tables
            # this transaction wrote stay on the primary.
            if dry:
                return None  # depends on the statement's tables
            written = self._tx_written
            if any(name.rsplit(".", 1)[-1] in written for name in verdict.relations):
                return primary
        if self._temps and (dry or any(name in self._temps for name in verdict.relations)):
            return None if dry else primary
        if not self.rules.lb_readable():
            return primary
        if self.rules.read_your_writes:
            replayed = self._replayed_here(lb, dry)
            if replayed is None:
                return None
            if not replayed:
                return primary
        per_statement = self.rules.per_statement
        if per_statement is not None and (dry or not per_statement()):
            return None if dry else primary
        if joining:
            if dry:
                return None
            self._join_lb()
        return lb

    def _replayed_here(self, lb: Leg, dry: bool = False) -> Optional[bool]:
        """read_your_writes: ``lb`` has replayed the session's last committed write.

        Asked lazily: after a commit that wrote, the first read that would go to the
        standby goes to the primary instead, together with a question for the primary's
        WAL position; later reads compare it with the standby's replay position (the
        replication check's, or the standby's own answer, asked when behind).
        """
        if self._lsn_pending:
            return False
        if self._unreplicated:
            if dry:
                return None
            # Queued before the read that goes to the primary instead; inside a
            # transaction it runs there too (its snapshot is the read's own moment).
            self._unreplicated = False
            self._capture_lsn()
            return False
        if not self.write_lsn:
            return True
        replayed = max(self._lb_replayed, self.rules.lb_replayed())
        if replayed >= self.write_lsn:
            return True
        if dry:
            return None
        self._ask_replayed(lb)
        return False

    # -- the extended protocol ---------------------------------------------------------

    def _extended(self, kind: int, msg: bytes, buf: bytes | bytearray, after: int) -> None:
        batch = self._batch
        if batch is None:
            if kind == _SYNC:
                self._send_unit(self._leg_for_write(), [], msg, None)
                return
            leader = self._batch_leader(msg, buf, after)
            unit = Unit(leader)
            self._queue.append(unit)
            self._copy_leg = leader
            batch = self._batch = Batch(unit)
        unit = batch.unit
        leader = unit.leader
        if kind == _SYNC:
            for leg in batch.legs:
                leg.sent.append(msg)
                unit.expect(leg)
            self._batch = None
            return
        targets = self._targets(kind, msg, leader, unit)
        for leg in targets:
            if leg is leader:
                leg.sent.append(msg)
            else:
                leg.sent.append(self._for_other(kind, msg, unit))
                if leg not in batch.legs:
                    batch.legs.append(leg)

    def _for_other(self, kind: int, msg: bytes, unit: Unit) -> bytes:
        if kind == _PARSE and unit.tx == "commit" and self.aborted is not None:
            return reparse(msg, "ROLLBACK")
        return msg

    def _targets(self, kind: int, msg: bytes, leader: Leg, unit: Unit) -> list[Leg]:
        """The legs a message of the open batch goes to; the leader always among them."""
        if kind == _PARSE:
            name, text = parse_fields(msg)
            verdict = self.rules.classify(text)
            self._remember(verdict)
            if self._lb_begin is not None and (name or verdict.route == ROUTE_ALL):
                self._join_lb()  # the standby must mirror what this batch sets or parses
            legs = self._everywhere(leader) if name or verdict.route == ROUTE_ALL else [leader]
            self._log(text, *legs)
            ending = verdict.tx in ("commit", "rollback", "rollback_to")
            if verdict.route == ROUTE_ALL and self.aborted is not None and not ending:
                legs = [leader]
            if name:
                self._statements[name] = verdict
                unit.named.append(name)
            else:
                self._unnamed = (verdict, legs)
            return legs
        if kind == _BIND:
            # What a statement does happens where it is bound and run, each time.
            portal, statement = bind_names(msg)
            if statement:
                bound = self._statements.get(statement)
                legs = (
                    self._everywhere(leader)
                    if bound is not None and bound.route == ROUTE_ALL
                    else [leader]
                )
            else:
                bound = self._unnamed[0]
                legs = self._unnamed[1] if leader in self._unnamed[1] else [leader]
            if bound is None or bound.write:
                self._note_sent(leader, bound if bound is not None else _UNKNOWN)
            elif bound.route == ROUTE_STANDBY:
                self._note_sent(leader, bound)
            if bound is not None and bound.tx:
                unit.tx = bound.tx
            self._portals[portal] = legs
            return legs
        if kind == _EXECUTE or ((kind in (_DESCRIBE, _CLOSE)) and msg[5] == ord("P")):
            name = msg[6 : msg.index(b"\0", 6)]
            legs = self._portals.get(name, [leader])
            return legs if leader in legs else [leader]
        if kind in (_DESCRIBE, _CLOSE):
            name = msg[6 : msg.index(b"\0", 6)]
            if not name:
                legs = self._unnamed[1]
                return legs if leader in legs else [leader]
            if kind == _CLOSE:
                self._statements.pop(name, None)
                return self._everywhere(leader)
            return [leader]
        return [leader]  # Flush

    def _everywhere(self, leader: Leg) -> list[Leg]:
        if self.desynced or self.lb is None:
            return [leader]
        return [leader] + [leg for leg in self.legs if leg is not leader]

    def _batch_leader(self, first: bytes, buf: bytes | bytearray, after: int) -> Leg:
        """Which leg answers a batch: read from its messages received so far.

        The primary if any of them needs it; the leg a statement or portal already
        lives on, if they name one; else the load-balancing node if every statement
        may be read there.
        """
        needs: Optional[Leg] = None
        reads: list[Verdict] = []
        parsed: set[bytes] = set()
        portals: set[bytes] = set()
        unnamed_parsed = False
        for kind, msg in batch_messages(first, buf, after):
            if kind == _PARSE:
                name, text = parse_fields(msg)
                verdict = self.rules.classify(text)
                if verdict.route != ROUTE_STANDBY:
                    return self._leg_for_write()
                reads.append(verdict)
                if name:
                    parsed.add(name)
                else:
                    unnamed_parsed = True
            elif kind == _BIND:
                portal, statement = bind_names(msg)
                portals.add(portal)
                if statement:
                    if statement in parsed:
                        continue
                    known = self._statements.get(statement)
                    if known is None or known.route != ROUTE_STANDBY:
                        return self._leg_for_write()
                    reads.append(known)
                elif not unnamed_parsed:
                    unnamed, where = self._unnamed
                    if unnamed is None or unnamed.route != ROUTE_STANDBY:
                        return self._leg_for_write()
                    if len(where) == 1:
                        needs = where[0]
                    reads.append(unnamed)
            elif kind in (_EXECUTE, _DESCRIBE, _CLOSE):
                if kind != _EXECUTE and msg[5] != ord("P"):
                    continue
                name = msg[6 : msg.index(b"\0", 6)]
                if name in portals:
                    continue
                bound = self._portals.get(name)
                if bound is not None and len(bound) == 1 and kind != _CLOSE:
                    needs = bound[0]
            elif kind == _FUNCTION_CALL:
                return self._leg_for_write()
        if self.aborted is not None:
            return self.aborted
        if needs is not None:
            return needs
        if not reads:
            return self.primary
        for verdict in reads:
            if self._read_leg(verdict) is self.primary:
                return self.primary
        return self.lb if self.lb is not None else self.primary

    # -- servers to the client -----------------------------------------------------------

    def server_data(self, leg: Leg, data: bytes) -> None:
        if self.fast is not None:
            self._sync()
        self.bytes_out += len(data)
        if leg.raw_left:
            # The rest of a message the C loop began forwarding (``adopt``).
            take = min(leg.raw_left, len(data))
            leg.raw_left -= take
            self.client_send(data[:take])
            data = data[take:]
        self._server_data(leg, data)
        if self.fast is not None and not self._queue:
            self.rearm()

    def _server_data(self, leg: Leg, data: bytes) -> None:
        if leg.buf:
            data = leg.buf + data
            leg.buf = b""
        size = len(data)
        pos = 0
        out = self._out
        queue = self._queue
        run = -1  # start of messages the client gets as they are, sent as one slice
        while size - pos >= 5:
            kind = data[pos]
            end = pos + 1 + _LENGTH(data, pos + 1)[0]
            if end > size:
                break
            if kind != _READY and kind != _PARAMETER_STATUS and leg.units:
                unit = leg.units[0]
                if unit.leader is leg and unit.client and queue and queue[0] is unit:
                    if run < 0:
                        run = pos
                    pos = end
                    continue
            if run >= 0:
                out.append(data[run:pos])
                run = -1
            self._server_message(leg, kind, data, pos, end, out)
            pos = end
        if run >= 0:
            out.append(data[run:pos])
        if pos < size:
            leg.buf = data[pos:]
        if out:
            self._out = []
            self.client_send(b"".join(out))

    def _server_message(
        self, leg: Leg, kind: int, data: bytes, pos: int, end: int, out: list[bytes]
    ) -> None:
        if kind == _PARAMETER_STATUS:
            try:
                name, value = m.parse_parameter_status(data[pos + 5 : end])
            except ProtocolViolation:
                name = ""
            if name:
                leg.params[name] = value
            if leg is self.primary:
                units = leg.units
                if units and units[0].client and units[0].leader is leg:
                    self._forward(units[0], data[pos:end], out)
                else:
                    out.append(data[pos:end])
            return
        units = leg.units
        if not units:
            # Outside any unit: a notice or notification from the primary reaches the client.
            if leg is self.primary:
                out.append(data[pos:end])
            return
        unit = units[0]
        if kind == _READY:
            units.popleft()
            if end > pos + 5:
                leg.status = data[pos + 5]
            unit.owed[leg] -= 1
            if leg is unit.leader and unit.client:
                if unit.owed[leg]:
                    self._forward(unit, data[pos:end], out)
                else:
                    unit.last = data[pos:end]
            if unit.complete:
                if unit.client:
                    self._complete()
                else:
                    self._internal_done(unit)
            return
        if leg is not unit.leader:
            # Another leg's answer to session state: the leader's is the one.  If it
            # refused what the leader took, that leg no longer mirrors the session.
            if kind == _ERROR and unit.client and leg is not self.primary:
                self._diverged(unit)
            return
        if unit.client:
            self._forward(unit, data[pos:end], out)
        elif kind == _DATA_ROW:
            unit.rows.append(data[pos + 5 : end])

    def _diverged(self, unit: Unit) -> None:
        """A non-leading leg refused part of ``unit``: statements it parsed run on the
        primary only; any other session state it missed ends load balancing.  A refused
        BEGIN (a standby refuses SERIALIZABLE) needs neither: the legs' transaction states
        differ until the transaction ends, and reads stay on the primary meanwhile."""
        if unit.named:
            for name in unit.named:
                verdict = self._statements.get(name)
                if verdict is not None and verdict.route != ROUTE_PRIMARY:
                    self._statements[name] = replace(verdict, route=ROUTE_PRIMARY)
        elif not unit.tx:
            self.desynced = True

    def _forward(self, unit: Unit, msg: bytes, out: list[bytes]) -> None:
        if self._queue and self._queue[0] is unit:
            out.append(msg)
        else:
            unit.held.append(msg)

    def _complete(self) -> None:
        """Send what the units at the head of the queue owe the client, in order."""
        queue, out = self._queue, self._out
        while queue:
            head = queue[0]
            if head.held:
                out.extend(head.held)
                head.held = []
            if not head.complete:
                return
            queue.popleft()
            if head.last:
                out.append(head.last)
                self.queries += 1
                self._unit_done(head)

    def _unit_done(self, unit: Unit) -> None:
        if self._ended(unit.leader):
            self.xacts += 1

    def _ended(self, leader: Leg) -> bool:
        """What a unit's end tells the session (the leader's status is the client's);
        True when it ended a transaction."""
        status = leader.status
        self.aborted = leader if status == FAILED else None
        if status == IDLE and self.primary.status == IDLE:
            self._wrote_in_tx = False
            self._tx_on_primary = False
            self._tx_written.clear()
            self._tx_wrote_unknown = False
            if not self._queue:  # nothing sent after it: no BEGIN in flight
                self._begun = False
            if self._dirty and self.rules.read_your_writes and self.lb is not None:
                self._dirty = False
                self._unreplicated = True
            return True
        return False

    # -- the pooler's own queries ------------------------------------------------------

    def _internal(
        self, leg: Leg, msg: bytes, done: Optional[Callable[[Unit], None]] = None
    ) -> None:
        """The pooler's own query on ``leg``, queued with the client's messages of this
        chunk (always called while routing one), its reply read here, never forwarded."""
        unit = Unit(leg, client=False)
        unit.done = done
        unit.expect(leg)
        leg.sent.append(msg)

    def _join_lb(self) -> None:
        """The load-balancing leg starts the transaction the primary already has."""
        begin, self._lb_begin = self._lb_begin, None
        lb = self.lb
        if begin is not None and lb is not None:
            self._internal(lb, begin)

    def _internal_done(self, unit: Unit) -> None:
        done = unit.done
        if done is not None:
            done(unit)

    def _capture_lsn(self) -> None:
        """After a commit that wrote: where the primary's WAL is (read-your-writes)."""
        self._lsn_pending = True
        self._internal(self.primary, _CURRENT_LSN, self._lsn_captured)

    def _lsn_captured(self, unit: Unit) -> None:
        self._lsn_pending = False
        lsn = first_lsn(unit.rows)
        if lsn is None:
            # No answer: reads stay on the primary for this session (safe, not fast).
            self.write_lsn = 1 << 63
            return
        self.write_lsn = max(self.write_lsn, lsn)

    def _ask_replayed(self, lb: Leg) -> None:
        """Ask the load-balancing node how far it has replayed, when it is idle."""
        if lb.units or lb.status != IDLE:
            return
        self._internal(lb, _REPLAYED_LSN, self._replayed)

    def _replayed(self, unit: Unit) -> None:
        lsn = first_lsn(unit.rows)
        if lsn is not None:
            self._lb_replayed = max(self._lb_replayed, lsn)


class _Broken(Exception):
    """The client's stream can no longer be framed."""
