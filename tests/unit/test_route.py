"""The C loop's router (engine/_route.c) against the stream alone (session/routed.py).

A routed session on the C loop is its ``RoutedStream`` plus a ``Router`` that routes the
plain statements the stream armed it for.  These tests run the same conversations twice:
once through the stream alone (bytes in, bytes out, no socket), once through real
socket pairs, the C ``poll()`` and the router with the same stream behind it.  Two small
fake servers answer both alike (transaction status kept per node, errors, the pooler's
own LSN questions).  The client must receive the same bytes, and every node the same
statements; hypothesis draws the conversations, pipelining, and the cuts in every answer.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
from collections import deque
from typing import Any, Callable, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.classify import Classifier
from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.session.context import fast_key
from pgpool_tw.session.legs import Leg
from pgpool_tw.session.routed import (
    FAST_BEGIN,
    FAST_COMMIT,
    FAST_PRIMARY,
    FAST_READ,
    FAST_WRITE,
    RoutedStream,
    RoutingRules,
)

SKIP = "pgpool_tw.engine._speedups is not built (or PGPOOL_TW_PURE_PYTHON is set)"

IDLE, IN_TX, FAILED = ord("I"), ord("T"), ord("E")


def frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Whole messages taken off the front of ``buf`` (type, whole message)."""
    out = []
    while len(buf) >= 5:
        end = 1 + int.from_bytes(buf[1:5], "big")
        if len(buf) < end:
            break
        out.append((buf[0], bytes(buf[:end])))
        del buf[:end]
    return out


class FakeServer:
    """Answers simple Queries as PostgreSQL would, as far as these conversations go."""

    def __init__(self, node: int, extra: Callable[[], bytes]) -> None:
        self.node = node
        self.status = IDLE
        self.got: list[str] = []
        self.extra = extra  # what to slip in before an answer's ReadyForQuery
        self.asked = 0

    def answer(self, msg: bytes) -> bytes:
        text = msg[5:-1].decode()
        self.got.append(text)
        word = text.split()[0].upper().rstrip(";")
        if "pg_current_wal_insert_lsn" in text or "pg_last_wal_replay_lsn" in text:
            # The primary's position grows; the replica's lags behind it by turns.
            self.asked += 1
            step = self.asked if self.node == 0 else self.asked // 2
            out = row(f"0/{0x5000000 + 0x100 * step:X}") + complete("SELECT 1")
        elif self.status == FAILED and word not in ("COMMIT", "ROLLBACK", "END"):
            out = error("25P02")
        elif word == "BEGIN":
            self.status = IN_TX
            out = complete("BEGIN")
        elif word in ("COMMIT", "END", "ROLLBACK"):
            tag = "ROLLBACK" if self.status == FAILED or word == "ROLLBACK" else "COMMIT"
            self.status = IDLE
            out = complete(tag)
        elif "1/0" in text:
            out = error("22012")
            if self.status == IN_TX:
                self.status = FAILED
        elif word == "SELECT" and "big" in text:
            # Rows longer than a chunk: the router follows them with its byte count.
            out = description() + row("x" * 40000) * 2 + complete("SELECT 2")
        elif word == "SELECT":
            out = description() + row("42") + complete("SELECT 1")
        else:
            out = complete(f"{word} 0 1" if word == "INSERT" else f"{word} 1")
        return out + self.extra() + m.ready_for_query(self.status)


def row(value: str) -> bytes:
    data = value.encode()
    return m.message(b"D", b"\x00\x01" + len(data).to_bytes(4, "big") + data)


def description() -> bytes:
    field = b"v\x00" + b"\x00" * 6 + (25).to_bytes(4, "big") + b"\xff\xff" * 3 + b"\x00\x00"
    return m.message(b"T", b"\x00\x01" + field)


def complete(tag: str) -> bytes:
    return m.message(b"C", m.cstring(tag))


def error(code: str) -> bytes:
    return m.error_response(code, "no", severity="ERROR")


class Taught:
    """What the process's routers know (SessionContext.fast_shapes, fast_begins)."""

    def __init__(self) -> None:
        self.shapes: dict[bytes, int] = {}
        self.begins: list[bytes] = []

    def learn(self, msg: bytes, kind: int, literals: bool) -> bool:
        """As SessionContext._learn (without its size cap)."""
        key = fast_key(msg, literals)
        if key is None:
            return False
        self.shapes[key] = kind
        return True


def new_stream(
    send: list[Callable[[bytes], None]],
    client_send: Callable[[bytes], None],
    taught: Optional[Taught],
    mode: str = "transaction",
    standby: bool = True,
) -> RoutedStream:
    rules = RoutingRules(
        Classifier().classify,
        lambda command, status: m.ready_for_query(status),
        on_write_mode=mode,
        learn=taught.learn if taught is not None else None,
        begins=taught.begins if taught is not None else None,
    )
    primary = Leg(0, send[0], IDLE, {})
    lb = Leg(1, send[1], IDLE, {}) if standby else None
    return RoutedStream(primary, lb, client_send, rules)


class Conversation:
    """One scripted conversation: client chunks, answers cut at drawn points."""

    def __init__(
        self,
        chunks: list[bytes],
        seed: int,
        notices: bool,
        statuses: bool,
        cut: bool = True,
        burst: frozenset[int] = frozenset(),
        mode: str = "transaction",
        standby: bool = True,
    ) -> None:
        #: disable_load_balance_on_write.
        self.mode = mode
        #: The session has a load-balancing leg (without one: the primary's alone, as
        #: when its load-balancing node is the primary).
        self.standby = standby
        self.chunks = chunks
        #: Chunk i + 1 follows chunk i before any answer (the router keeps it meanwhile).
        self.burst = burst
        self.seed = seed
        self.notices = notices
        self.statuses = statuses
        #: Answers arrive in pieces (a header cut in two sends the rest to Python).
        self.cut = cut

    def extras(self) -> Callable[[], bytes]:
        rng = random.Random(self.seed + 1)

        def extra() -> bytes:
            out = b""
            if self.notices and rng.random() < 0.3:
                out += m.message(b"N", b"SNOTICE\x00Mhello\x00\x00")
            if self.statuses and rng.random() < 0.2:
                out += m.parameter_status("application_name", f"a{rng.randrange(9)}")
            return out

        return extra

    def cuts(self, data: bytes, rng: random.Random) -> list[bytes]:
        if not self.cut:
            return [data]
        points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(3))))
        return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


def run_alone(
    talk: Conversation, after: Optional[Callable[[RoutedStream], None]] = None
) -> tuple[bytes, list[list[str]]]:
    """The conversation through the stream alone (``after``: called with the stream once
    each chunk was answered)."""
    client: list[bytes] = []
    sent: list[list[bytes]] = [[], []]
    stream = new_stream(
        [sent[0].append, sent[1].append], client.append, None, talk.mode, talk.standby
    )
    extra = talk.extras()
    servers = [FakeServer(0, extra), FakeServer(1, extra)]
    rng = random.Random(talk.seed)
    bufs = [bytearray(), bytearray()]
    for i, chunk in enumerate(talk.chunks):
        if i - 1 in talk.burst:
            continue  # sent with the one before
        stream.feed_client(chunk)
        if i in talk.burst and i + 1 < len(talk.chunks):
            stream.feed_client(talk.chunks[i + 1])
        while any(sent):
            for node in (0, 1):
                for data in sent[node]:
                    bufs[node] += data
                sent[node].clear()
                for kind, msg in frames(bufs[node]):
                    if kind != ord("Q"):
                        continue
                    for piece in talk.cuts(servers[node].answer(msg), rng):
                        leg = stream.primary if node == 0 else stream.lb
                        assert leg is not None
                        stream.server_data(leg, piece)
        if after is not None:
            after(stream)
    return b"".join(client), [s.got for s in servers]


def everything_of(stream: RoutedStream) -> dict[str, object]:
    """The stream's attributes and its legs', copied (containers as plain values)."""

    def plain(value: object) -> object:
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, (list, deque)):
            return [id(item) for item in value]
        if isinstance(value, dict):
            return dict(value)
        return value

    out = {name: plain(value) for name, value in vars(stream).items()}
    for leg in stream.legs:
        for name in Leg.__slots__:
            out[f"leg{leg.node}.{name}"] = plain(getattr(leg, name))
    return out


class RoutedPair:
    """Client, primary and replica as socket pairs; the router and a stream between."""

    def __init__(self, taught: Taught, mode: str = "transaction", standby: bool = True) -> None:
        assert speedups is not None
        self.ep = select.epoll()
        self.outer: list[socket.socket] = []  # the client's, the primary's, the replica's ends
        self.inner: list[socket.socket] = []  # the pooler's ends
        for _ in range(3):
            a, b = socket.socketpair()
            for sock in (a, b):
                sock.setblocking(False)
                # Room for the big answers: nobody reads while the test writes one.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.outer.append(a)
            self.inner.append(b)
            self.ep.register(b.fileno(), select.EPOLLIN)
        self.taught = taught
        self.adopted = 0
        self.servers: list[FakeServer] = []
        inner = self.inner
        sends = [inner[1].sendall, inner[2].sendall]
        self.stream = new_stream(sends, inner[0].sendall, taught, mode, standby)
        legs = [self.stream.primary, self.stream.lb]

        def adopt(leg: int, raw_left: int, kind: int) -> None:
            self.adopted += 1
            self.stream.adopt(leg, raw_left, kind)

        socks = inner if standby else inner[:2]
        self.router = speedups.Router(
            (*[sock.fileno() for sock in socks], -1)[:3],
            (*[Writer(sock) for sock in socks], None)[:3],
            set(),
            taught.shapes,
            (
                self.stream.feed_client,
                legs[0].feed_server,
                legs[1].feed_server if legs[1] is not None else None,
            ),
            adopt,
        )
        self.stream.fast = self.router
        for side, sock in enumerate(socks):
            speedups.register_router(sock.fileno(), self.router, side)
        self.stream.rearm()

    def close(self) -> None:
        """Every socket given back and closed (hypothesis runs many pairs per test)."""
        assert speedups is not None
        for side in range(3):
            self.router.forget(side)
        for sock in self.outer + self.inner:
            sock.close()
        self.ep.close()

    def poll(self) -> list[tuple[int, int]]:
        assert speedups is not None
        return speedups.poll(self.ep.fileno(), 0, 8)

    def take(self, side: int) -> bytes:
        out = b""
        with contextlib.suppress(BlockingIOError):
            while part := self.outer[side].recv(1 << 16):
                out += part
        return out


class Writer:
    """A transport's ``write`` for what the kernel did not take (never, at these sizes)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


def run_routed(
    case: SynchronousTestCase, talk: Conversation, taught: Optional[Taught] = None
) -> tuple[bytes, list[list[str]], RoutedPair]:
    """The conversation through sockets, poll() and the router (``taught``: what earlier
    sessions taught it)."""
    pair = RoutedPair(Taught() if taught is None else taught, talk.mode, talk.standby)
    try:
        client = _converse(case, talk, pair)
    finally:
        pair.close()
    return client, [s.got for s in pair.servers], pair


def _converse(case: SynchronousTestCase, talk: Conversation, pair: RoutedPair) -> bytes:
    extra = talk.extras()
    servers = pair.servers = [FakeServer(0, extra), FakeServer(1, extra)]
    rng = random.Random(talk.seed)
    bufs = [bytearray(), bytearray()]
    client = b""
    for i, chunk in enumerate(talk.chunks):
        if i - 1 in talk.burst:
            continue  # sent with the one before
        pair.outer[0].sendall(chunk)
        if i in talk.burst and i + 1 < len(talk.chunks):
            case.assertEqual(pair.poll(), [])
            pair.outer[0].sendall(talk.chunks[i + 1])
        quiet = 0
        while quiet < 2:  # until a round moves nothing twice
            case.assertEqual(pair.poll(), [])
            moved = False
            for node in (0, 1):
                bufs[node] += pair.take(node + 1)
                for kind, msg in frames(bufs[node]):
                    if kind != ord("Q"):
                        continue
                    moved = True
                    for piece in talk.cuts(servers[node].answer(msg), rng):
                        pair.outer[node + 1].sendall(piece)
                        case.assertEqual(pair.poll(), [])
            got = pair.take(0)
            client += got
            quiet = 0 if moved or got else quiet + 1
    client += pair.take(0)
    return client


READS = [
    "SELECT v FROM t WHERE id = {n}",
    "SELECT count(*) FROM t WHERE v > {n}",
    "SELECT big FROM t WHERE id = {n}",
]
WRITES = ["UPDATE t SET v = v + {n} WHERE id = 1", "INSERT INTO t VALUES ({n})"]
OTHERS = [
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT 1/0",
    "SELECT v FROM t WHERE id = {n} FOR UPDATE",
]

statement = st.builds(
    lambda template, n: template.format(n=n),
    st.sampled_from(READS * 3 + WRITES * 2 + OTHERS + ["BEGIN", "COMMIT"]),
    st.integers(min_value=0, max_value=99999),
)


@st.composite
def conversations(draw: Any) -> Conversation:
    texts = draw(st.lists(statement, min_size=1, max_size=25))
    chunks: list[bytes] = []
    for text in texts:
        msg = m.query(text)
        if chunks and draw(st.integers(0, 9)) == 0:
            chunks[-1] += msg  # pipelined in one chunk
        else:
            chunks.append(msg)
    burst = draw(st.frozensets(st.integers(0, len(chunks) - 1), max_size=3))
    burst = frozenset(i for i in burst if i - 1 not in burst)
    if any(b"1/0" in text for text in chunks):
        # A statement sent behind one that fails, in a transaction split over both
        # nodes, is routed before the failure is known: the stream alone may run it
        # where one server would refuse it (docs/ARCHITECTURE.md "Not yet"); the
        # router keeps it until the answer ended.  Bursts only without failures.
        burst = frozenset()
    # With bursts, a statement may be answered by the other node in one of the runs: no
    # extras then (a node's ParameterStatus reaches the client only from the primary).
    extras = not burst and draw(st.booleans())
    return Conversation(
        chunks,
        draw(st.integers(0, 1 << 30)),
        extras and draw(st.booleans()),
        extras and draw(st.booleans()),
        burst=burst,
        mode=draw(
            st.sampled_from(["transaction", "trans_transaction", "always", "off", "dml_adaptive"])
        ),
        standby=draw(st.integers(0, 3)) > 0,
    )


class AgreementTests(SynchronousTestCase):
    skip = SKIP if speedups is None else None

    @settings(max_examples=150, deadline=None)
    @given(conversations())
    def test_the_table_of_states_leaves_the_stream_as_it_was(self, talk: Conversation) -> None:
        """Computing the router's table runs the routing code on the stream's own fields:
        every one of them must be as before (a field left out of the snapshots would
        carry a state the session never reached)."""
        checked: list[int] = []

        def compute(stream: RoutedStream) -> None:
            if not stream._armable():
                return
            if not stream.rules.begins:
                stream.rules.begins.append(m.query("BEGIN"))
            stream._kinds = (FAST_READ, FAST_WRITE, FAST_PRIMARY, FAST_COMMIT, FAST_BEGIN)
            before = everything_of(stream)
            stream.rules.automata.clear()
            stream._automaton()
            self.assertEqual(everything_of(stream), before)
            checked.append(1)

        run_alone(talk, compute)

    @settings(max_examples=150, deadline=None)
    @given(conversations())
    def test_router_and_stream_alone_agree(self, talk: Conversation) -> None:
        """Every conversation: the same bytes to the client, the same statements per node."""
        # Twice through the router: the first session teaches it the shapes, the second
        # (a new session, as another client's) finds them known from its first statement.
        alone = run_alone(talk)
        taught = Taught()
        for _ in range(2):
            client, got, pair = run_routed(self, talk, taught)
            if talk.burst:
                # A statement the client sent while C waited on an answer is routed once
                # that answer ended: maybe elsewhere than while it was in flight.
                self.assertEqual(client, alone[0])
            else:
                self.assertEqual((client, got), alone)

    def test_plain_reads_are_routed_in_c(self) -> None:
        """Reads of a known shape go to the replica without the stream seeing them."""
        texts = [f"SELECT v FROM t WHERE id = {n}" for n in range(10)]
        talk = Conversation([m.query(t) for t in texts], 1, False, False, cut=False)
        client, got, pair = run_routed(self, talk)
        self.assertEqual(got, [[], texts])
        counts = pair.router.take_counts()
        # The first taught the shape; the nine others never reached Python.
        self.assertEqual(counts[0], 9)  # queries answered in C
        self.assertEqual(counts[5], 9)  # reads sent to the replica
        self.assertEqual(pair.stream.queries, 1)
        shapes = pair.taught.shapes
        self.assertEqual(shapes, {speedups.shape_key(texts[0].encode()): FAST_READ})  # type: ignore[union-attr]

    def test_writes_in_a_transaction_that_wrote_are_routed_in_c(self) -> None:
        texts = ["BEGIN", "UPDATE t SET v = 1 WHERE id = 1"]
        texts += [f"UPDATE t SET v = {n} WHERE id = 1" for n in range(5)] + ["COMMIT"]
        talk = Conversation([m.query(t) for t in texts], 1, False, False, cut=False)
        client, got, pair = run_routed(self, talk)
        self.assertEqual(got[0], texts)
        self.assertEqual(pair.router.take_counts()[0], 5)

    def test_an_unexpected_message_hands_the_statement_to_python(self) -> None:
        """A ParameterStatus in a read's answer: the stream adopts the statement."""
        texts = [f"SELECT v FROM t WHERE id = {n}" for n in range(6)]
        talk = Conversation([m.query(t) for t in texts], 3, False, True, cut=False)
        alone = run_alone(talk)
        client, got, pair = run_routed(self, talk)
        self.assertEqual((client, got), alone)
        # The replica's parameter reached its leg, not the client (the primary's would).
        assert pair.stream.lb is not None
        self.assertIn("application_name", pair.stream.lb.params)
        self.assertNotIn(b"application_name", client)
        self.assertGreater(pair.adopted, 0)

    def test_a_failed_statement_in_a_transaction_goes_back_to_python(self) -> None:
        """An error inside a transaction ends with status E: the stream adopts it."""
        texts = ["SELECT 1/0", "BEGIN", "UPDATE t SET v = 1 WHERE id = 1", "SELECT 1/1"]
        texts += ["SELECT 1/0", "UPDATE t SET v = 3 WHERE id = 1", "COMMIT"]
        talk = Conversation([m.query(t) for t in texts], 1, False, False, cut=False)
        alone = run_alone(talk)
        client, got, pair = run_routed(self, talk)
        self.assertEqual((client, got), alone)
        self.assertIn(b"25P02", client)
        self.assertGreater(pair.adopted, 0)

    def test_a_statement_sent_while_c_waits_follows_the_answer(self) -> None:
        """The client's next Query, read while C forwards an answer, is kept and routed
        once that answer ended, in C again when it is plain."""
        texts = [f"SELECT v FROM t WHERE id = {n}" for n in range(3)]
        talk = Conversation(
            [m.query(t) for t in texts], 1, False, False, cut=False, burst=frozenset({1})
        )
        alone = run_alone(talk)
        client, got, pair = run_routed(self, talk)
        self.assertEqual(client, alone[0])
        self.assertEqual(client.count(b"Z\x00\x00\x00\x05I"), 3)
        self.assertEqual(pair.router.take_counts()[0], 2)  # both of the burst in C

    def test_whole_transactions_are_routed_in_c_once_their_shapes_are_known(self) -> None:
        """TPC-B's transaction: BEGIN, writes, a read and END move the session's state;
        the router follows Python's table of states, and Python takes the state it
        reached when it next sees the session."""
        self.whole_transactions(standby=True)

    def test_whole_transactions_in_c_without_a_load_balancing_leg(self) -> None:
        """A session whose load-balancing node is the primary: BEGIN is the primary's
        alone (nothing to defer), and goes by the router as well."""
        self.whole_transactions(standby=False)

    def whole_transactions(self, standby: bool) -> None:
        tx = [
            "BEGIN;",
            "UPDATE t SET v = v + {n} WHERE id = 1;",
            "SELECT v FROM t WHERE id = {n};",
            "UPDATE u SET v = v + {n} WHERE id = 2;",
            "INSERT INTO h VALUES ({n});",
            "END;",
        ]
        texts = [t.format(n=n) for n in range(4) for t in tx]
        talk = Conversation(
            [m.query(t) for t in texts], 1, False, False, cut=False, standby=standby
        )
        alone = run_alone(talk)
        taught = Taught()
        run_routed(self, talk, taught)  # teaches the shapes
        client, got, pair = run_routed(self, talk, taught)
        self.assertEqual((client, got), alone)
        self.assertEqual(got[1], [])  # a writing transaction never touches the standby
        # A session shows Python each class of statement once (BEGIN, the first write,
        # the read, END: the router's table covers the classes the session sends); the
        # other statements of the first transaction and every later one go by the router.
        self.assertEqual(pair.router.take_counts()[0], len(texts) - 4)
        self.assertEqual(pair.stream.queries, 4)
        # Python's state is the one the router reached: idle, and with a standby the
        # last commit to wait for there.
        self.assertEqual(pair.stream.status, IDLE)
        self.assertEqual(pair.stream._unreplicated, standby)
