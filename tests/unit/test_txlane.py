"""The C loop's transaction lane (engine/_txlane.c) against the stream alone.

A transaction-mode client on the lane is its ``TransactionStream`` plus a ``TxClient``:
the lane runs a simple Query whose shape Python listed and walks its answer; what it
cannot walk it hands to the stream (``adopt``), which carries on.  These tests run real
socket pairs through the C ``poll()``: the client must receive exactly the bytes the
server sent, however hypothesis cuts them and whatever message the lane does not know
appears, and the server must go back to the lane exactly when nothing was adopted.
The lane's queue, its order against Python's waiters and its hand-offs are checked
with the same sockets.
"""

from __future__ import annotations

import contextlib
import select
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.session.transaction import StatementNames, TransactionStream

QUERY = m.query("select 1")


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


#: Messages of a simple Query's answer the lane walks, and some it leaves to Python.
WALKED = st.one_of(
    st.binary(min_size=0, max_size=40).map(lambda b: _message(b"D", b"\0\1" + b)),
    st.just(_message(b"T", b"\0\0")),
    st.just(_message(b"C", b"SELECT 1\0")),
    st.just(_message(b"N", b"SWARNING\0Mhello\0\0")),
    st.just(_message(b"I", b"")),
)
UNWALKED = st.one_of(
    st.just(_message(b"S", b"application_name\0other\0")),
    st.just(_message(b"A", b"\0\0\0\1chan\0\0")),
)


class FakeServer:
    """What the stream reads of a server connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.params: dict[str, str] = {"application_name": ""}
        self.prepared: dict[bytes, None] = {}
        self.replayed: dict[str, str] = {}
        self.sql_prepared: dict[str, str] = {}
        self.status = m.IDLE

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class Writer:
    """A transport's ``write`` for what the kernel did not take."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)


class Client:
    """One client: its socket pair, stream and TxClient; the session's part in it."""

    def __init__(self, rig: Rig) -> None:
        assert speedups is not None
        self.outer, self.inner = _pair()
        rig.ep.register(self.inner.fileno(), select.EPOLLIN)
        self.released = 0
        self.held = 0
        self.adopted: list[Any] = []
        self.data: list[bytes] = []
        self.stream = TransactionStream(self.inner.sendall, self, StatementNames(), 200, "")
        self.tx = speedups.TxClient(
            rig.lane,
            Writer(self.inner),
            self.inner.fileno(),
            self._data,
            self._adopt,
            self._expired,
        )
        self.expired = 0

    def _data(self, data: bytes) -> None:
        self.data.append(data)

    def _adopt(self, tx: Any, raw_left: int, rest: bytes, status: int) -> None:
        self.adopted.append(tx)
        self.stream.adopt(tx.backend, raw_left, status)
        if rest:
            self.stream.feed_server(rest)

    def _expired(self) -> None:
        self.expired += 1

    # TxOwner
    def want_server(self, first: bytes) -> None:
        pass

    def release_server(self) -> None:
        self.released += 1

    def hold_server(self) -> None:
        self.held += 1

    def stream_broken(self, why: str) -> None:
        raise AssertionError(why)

    def take(self) -> bytes:
        out = b""
        with contextlib.suppress(BlockingIOError):
            while part := self.outer.recv(1 << 16):
                out += part
        return out


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return a, b


class Rig:
    """A lane, its servers and clients on socket pairs, and the C poll over them."""

    def __init__(self) -> None:
        assert speedups is not None
        self.ep = select.epoll()
        key = speedups.shape_key(b"select 1")
        assert key is not None
        self.events: list[tuple[int, Any]] = []
        self.lane = speedups.TxLane({key: 1}, set(), self._event)
        self.socks: list[socket.socket] = []
        self.clients: list[Client] = []
        self.servers: list[tuple[socket.socket, Any]] = []
        #: What Twisted would do with a server's events the C loop leaves it.
        self.twisted: dict[int, Any] = {}

    def _event(self, kind: int, tx: Any) -> None:
        self.events.append((kind, tx))

    def client(self) -> Client:
        client = Client(self)
        client.tx.arm(0)
        self.clients.append(client)
        return client

    def server(self, tag: int = 0) -> tuple[socket.socket, Any]:
        assert speedups is not None
        outer, inner = _pair()
        self.ep.register(inner.fileno(), select.EPOLLIN)
        tx = speedups.TxServer(FakeServer(inner), Writer(inner), inner.fileno(), tag)
        self.servers.append((outer, tx))
        self.twisted[inner.fileno()] = lambda: self._read_server(inner, tx)
        self.socks += [outer, inner]
        return outer, tx

    def running(self, client: Client) -> tuple[socket.socket, Any]:
        """A new server parked on the lane, and ``client``'s QUERY sent: the lane runs it
        on that server (the server's end and its TxServer)."""
        outer, tx = self.server()
        self.lane.give(tx)
        client.outer.sendall(QUERY)
        self.poll()
        return outer, tx

    def poll(self) -> list[tuple[int, int]]:
        """The C poll a few times; a server's events left for Twisted are read as
        Twisted would (into the stream of the client that adopted it)."""
        assert speedups is not None
        left = []
        for _ in range(4):
            for fd, ev in speedups.poll(self.ep.fileno(), 0, 16):
                reader = self.twisted.get(fd)
                if reader is None:
                    left.append((fd, ev))
                else:
                    reader()
        return left

    def _read_server(self, inner: socket.socket, tx: Any) -> None:
        data = _take(inner)
        for client in self.clients:
            if client.stream.server is tx.backend and data:
                client.stream.feed_server(data)

    def close(self) -> None:
        for client in self.clients:
            client.tx.forget()
            client.outer.close()
            client.inner.close()
        self.lane.close()
        for sock in self.socks:
            sock.close()
        self.ep.close()


def _take(sock: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(BlockingIOError):
        while part := sock.recv(1 << 16):
            out += part
    return out


class LaneTests(SynchronousTestCase):
    def setUp(self) -> None:
        if speedups is None:
            raise SkipTest("pgpool_tw.engine._speedups is not built")
        self.rig = Rig()
        self.addCleanup(self.rig.close)

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.one_of(WALKED, WALKED, WALKED, UNWALKED), max_size=12),
        st.lists(st.integers(min_value=1, max_value=400), max_size=6),
        st.sampled_from([b"I", b"T", b"E"]),
    )
    def test_the_answer_reaches_the_client_whole(
        self, body: list[bytes], cuts: list[int], status: bytes
    ) -> None:
        """Whatever the answer holds, wherever it is cut and whatever status it ends
        with: the client gets every byte in order; the server is back on the lane (idle)
        or still the client's (a block) unless the stream adopted the transaction, which
        it did whenever a message the lane does not walk came."""
        rig = Rig()
        try:
            client = rig.client()
            outer, tx = rig.server()
            rig.lane.give(tx)
            client.outer.sendall(QUERY)
            rig.poll()
            self.assertEqual(_take(outer), QUERY)
            answer = b"".join(body) + _message(b"Z", status)
            at = 0
            for cut in [*cuts, len(answer)]:
                part = answer[at : at + cut]
                if not part:
                    break
                outer.sendall(part)
                at += len(part)
                rig.poll()
            if at < len(answer):
                outer.sendall(answer[at:])
                rig.poll()
            self.assertEqual(client.take(), answer)
            unwalked = any(msg[:1] in (b"S", b"A") for msg in body)
            if unwalked:
                self.assertEqual(len(client.adopted), 1)
            idle = status == b"I"
            if client.adopted:
                self.assertIs(client.stream.server, tx.backend)
                self.assertEqual(client.stream.status, status[0])
                self.assertEqual(client.released, int(idle))  # idle and owed nothing: ended
                self.assertEqual(rig.lane.idle_count, 0)
                self.assertEqual(rig.lane.busy, 0)
            else:
                self.assertEqual(rig.lane.idle_count, int(idle))
                self.assertEqual(rig.lane.busy, int(not idle))
                self.assertIs(client.tx.server, None if idle else tx)
                self.assertEqual(rig.lane.counts[0], 1)
        finally:
            rig.close()

    def test_clients_wait_in_turn(self) -> None:
        """One server, three clients: the second and third wait on the lane and are
        served in arrival order, each getting its own answer."""
        rig = self.rig
        a, b, c = rig.client(), rig.client(), rig.client()
        outer, tx = rig.server()
        rig.lane.give(tx)
        for client in (a, b, c):
            client.outer.sendall(QUERY)
            rig.poll()
        self.assertEqual(rig.lane.waiting, 2)
        self.assertTrue(b.tx.waiting and c.tx.waiting)
        for n, client in enumerate((a, b, c)):
            self.assertEqual(_take(outer), QUERY)
            answer = _message(b"D", bytes([0, 1, n])) + _message(b"Z", b"I")
            outer.sendall(answer)
            rig.poll()
            self.assertEqual(client.take(), answer)
        self.assertEqual(rig.lane.waiting, 0)
        self.assertEqual(rig.lane.idle_count, 1)
        self.assertEqual(rig.lane.counts, (3, 0, 0))
        self.assertGreater(rig.lane.take_waited(), 0.0)  # b and c waited
        self.assertEqual(rig.lane.take_waited(), 0.0)  # taken

    def test_python_first_waiter_gets_the_server_first(self) -> None:
        """A server freed while Python's first waiter arrived before the lane's goes to
        Python (EV_TX_RETURN); after Python's, the lane's waiter is served."""
        rig = self.rig
        a, b = rig.client(), rig.client()
        outer, tx = rig.running(a)
        rig.lane.py_first = rig.lane.arrive()  # Python's waiter comes before b
        b.outer.sendall(QUERY)
        rig.poll()
        _take(outer)
        outer.sendall(_message(b"Z", b"I"))
        rig.poll()
        self.assertEqual(rig.events, [(speedups.EV_TX_RETURN, tx)])  # type: ignore[union-attr]
        self.assertTrue(b.tx.waiting)
        rig.lane.py_first = 0
        rig.lane.give(tx)  # Python's transaction ended
        self.assertFalse(b.tx.waiting)
        rig.poll()
        self.assertEqual(_take(outer), QUERY)

    def test_other_chunks_go_to_python_and_disarm(self) -> None:
        rig = self.rig
        a = rig.client()
        outer, tx = rig.server()
        rig.lane.give(tx)
        other = m.query("select 2; select 3")
        a.outer.sendall(other)
        rig.poll()
        self.assertEqual(a.data, [other])
        self.assertFalse(a.tx.armed)
        a.outer.sendall(QUERY)
        self.assertEqual(set(rig.poll()), {(a.inner.fileno(), select.EPOLLIN)})  # Twisted's now
        self.assertEqual(rig.lane.idle_count, 1)

    def test_another_tag_goes_to_python(self) -> None:
        """No server with the client's settings: Python takes the chunk (it replays)."""
        rig = self.rig
        a = rig.client()
        a.tx.arm(5)
        outer, tx = rig.server(tag=0)
        rig.lane.give(tx)
        a.outer.sendall(QUERY)
        rig.poll()
        self.assertEqual(a.data, [QUERY])
        self.assertEqual(_take(outer), b"")

    def test_room_sends_a_client_to_python_instead_of_waiting(self) -> None:
        rig = self.rig
        a = rig.client()
        rig.lane.room = True
        a.outer.sendall(QUERY)
        rig.poll()
        self.assertEqual(a.data, [QUERY])
        self.assertEqual(rig.lane.waiting, 0)

    def test_expire_and_kick(self) -> None:
        rig = self.rig
        a, b = rig.client(), rig.client()
        for client in (a, b):
            client.outer.sendall(QUERY)
        rig.poll()
        self.assertEqual(rig.lane.waiting, 2)
        self.assertTrue(rig.lane.kick())
        self.assertEqual(a.data, [QUERY])
        self.assertEqual(rig.lane.expire(3600.0), [])
        self.assertEqual(rig.lane.expire(0.0), [b.tx])
        self.assertEqual(rig.lane.waiting, 0)
        self.assertFalse(rig.lane.kick())

    def test_a_parked_server_that_speaks_is_pythons(self) -> None:
        rig = self.rig
        outer, tx = rig.server()
        rig.lane.give(tx)
        rig.twisted.pop(tx.backend.sock.fileno())  # what Twisted is left is seen here
        outer.sendall(_message(b"S", b"TimeZone\0UTC\0"))
        left = rig.poll()
        self.assertEqual(rig.events, [(speedups.EV_TX_LOST, tx)])  # type: ignore[union-attr]
        self.assertEqual(rig.lane.idle_count, 0)
        self.assertIn((tx.backend.sock.fileno(), select.EPOLLIN), left)

    def test_take_remove_and_idle(self) -> None:
        rig = self.rig
        _, first = rig.server()
        _, second = rig.server()
        rig.lane.give(first)
        rig.lane.give(second)
        self.assertEqual([tx for tx, _ in rig.lane.idle()], [first, second])
        self.assertIs(rig.lane.take(), second)  # the most recently parked
        self.assertTrue(rig.lane.remove(first))
        self.assertFalse(rig.lane.remove(first))
        self.assertIsNone(rig.lane.take())

    def test_a_client_that_vanishes_mid_answer_is_adopted(self) -> None:
        rig = self.rig
        a = rig.client()
        outer, tx = rig.running(a)
        a.outer.close()
        left = rig.poll()
        self.assertEqual(a.adopted, [tx])
        self.assertIn(
            (a.inner.fileno(), select.EPOLLIN), [(fd, ev & select.EPOLLIN) for fd, ev in left]
        )
        self.assertEqual(rig.lane.busy, 0)
        a.outer = socket.socket()  # closed above; Rig.close closes this one

    def test_pipelined_chunks_are_kept_for_after_the_answer(self) -> None:
        rig = self.rig
        a = rig.client()
        outer, tx = rig.running(a)
        a.outer.sendall(QUERY)  # during the answer
        rig.poll()
        self.assertEqual(_take(outer), QUERY)
        outer.sendall(_message(b"Z", b"I"))
        rig.poll()
        self.assertEqual(_take(outer), QUERY)  # the second, on the same lane
        outer.sendall(_message(b"Z", b"I"))
        rig.poll()
        self.assertEqual(a.take(), _message(b"Z", b"I") * 2)
        self.assertEqual(rig.lane.counts[0], 2)

    def test_a_block_keeps_its_server(self) -> None:
        """ReadyForQuery in a block: the client's next listed Query goes to the same
        server from here, and the server goes back at the idle one."""
        rig = self.rig
        a, b = rig.client(), rig.client()
        outer, tx = rig.running(a)
        self.assertEqual(_take(outer), QUERY)
        outer.sendall(_message(b"Z", b"T"))
        rig.poll()
        b.outer.sendall(QUERY)  # waits: a's block holds the only server
        rig.poll()
        self.assertTrue(b.tx.waiting)
        a.outer.sendall(QUERY)
        rig.poll()
        self.assertEqual(_take(outer), QUERY)
        outer.sendall(_message(b"Z", b"I"))
        rig.poll()
        self.assertEqual(a.take(), _message(b"Z", b"T") + _message(b"Z", b"I"))
        self.assertEqual(_take(outer), QUERY)  # b's, once a's block ended
        self.assertEqual(rig.lane.counts, (3, 0, 0))  # statements: two of a, one of b

    def test_another_chunk_in_a_block_is_adopted(self) -> None:
        """Inside a block, a chunk the lane does not take: the stream holds the server
        with the block's status and gets the chunk, which it sends on."""
        rig = self.rig
        a = rig.client()
        outer, tx = rig.running(a)
        _take(outer)
        outer.sendall(_message(b"Z", b"E"))
        rig.poll()
        other = m.query("rollback; select 3")
        a.outer.sendall(other)
        rig.poll()
        self.assertEqual(a.adopted, [tx])
        self.assertIs(a.stream.server, tx.backend)
        self.assertEqual(a.data, [other])
        self.assertEqual(a.stream.status, ord("E"))
        self.assertEqual(rig.lane.busy, 0)

    def test_a_pinned_clients_server_stays_its_own(self) -> None:
        """A held server (a pinned client's) serves the client's listed Queries and stays
        after each idle ReadyForQuery; another chunk hands it to the stream, idle."""
        rig = self.rig
        a, b = rig.client(), rig.client()
        outer, tx = rig.server()
        a.tx.hold(tx)
        for _ in range(2):
            a.outer.sendall(QUERY)
            rig.poll()
            self.assertEqual(_take(outer), QUERY)
            outer.sendall(_message(b"Z", b"I"))
            rig.poll()
        self.assertIs(a.tx.server, tx)
        self.assertEqual(rig.lane.idle_count, 0)
        b.outer.sendall(QUERY)  # b waits: the only server is a's
        rig.poll()
        self.assertTrue(b.tx.waiting)
        other = m.query("unlisten *")
        a.outer.sendall(other)
        rig.poll()
        self.assertEqual(a.adopted, [tx])
        self.assertIs(a.stream.server, tx.backend)
        self.assertEqual(a.stream.status, ord("I"))
        self.assertEqual(a.data, [other])
        self.assertEqual(a.take(), _message(b"Z", b"I") * 2)
        self.assertEqual(rig.lane.busy, 0)

    def test_a_retired_server_goes_back_to_python_when_freed(self) -> None:
        rig = self.rig
        a = rig.client()
        outer, tx = rig.running(a)
        tx.retire()
        _take(outer)
        outer.sendall(_message(b"Z", b"I"))
        rig.poll()
        self.assertEqual(a.take(), _message(b"Z", b"I"))
        self.assertEqual(rig.events, [(speedups.EV_TX_RETIRED, tx)])  # type: ignore[union-attr]
        self.assertEqual(rig.lane.idle_count, 0)
