"""The send-now writer: net/transport.py's Python one and engine/_writer.c's agree.

Both are driven on real socket pairs through the same real Twisted states (an
epoll reactor that is never run, a ``tcp.Connection`` per pair): nothing
queued, bytes queued by Twisted's write, a kernel buffer that is full, a
pending loseConnection, a closed connection.  After each step both must have
sent the same bytes at once and left the same bytes queued in Twisted.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import epollreactor, error, tcp
from twisted.internet.protocol import Protocol
from twisted.python import failure
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.engine.writer import c_writer, make_writer

Step = Callable[[Any, Callable[[bytes], None]], None]


class Leg:
    """One socket pair: our end wrapped in a real Twisted transport, and the peer."""

    def __init__(self, case: SynchronousTestCase, reactor: Any, in_c: bool) -> None:
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.setblocking(False)
        case.addCleanup(self.peer.close)
        self.transport = tcp.Connection(ours, Protocol(), reactor)
        self.transport.connected = 1  # as tcp.Server sets it for an accepted socket
        self.transport.protocol.makeConnection(self.transport)
        case.addCleanup(self.close)
        self.write = make_writer(self.transport, in_c)

    def close(self) -> None:
        sock = getattr(self.transport, "socket", None)  # gone once Twisted closed it
        if sock is not None:
            self.transport.stopWriting()
            self.transport.stopReading()
            sock.close()

    def received(self) -> bytes:
        out = b""
        while True:
            try:
                part = self.peer.recv(1 << 20)
            except BlockingIOError:
                return out
            if not part:
                return out
            out += part

    def queued(self) -> bytes:
        t = self.transport
        return bytes(t.dataBuffer[t.offset :]) + b"".join(t._tempDataBuffer)


def fill_kernel(leg: Leg, write: Callable[[bytes], None]) -> None:
    write(b"k" * (8 << 20))  # more than any socket buffer takes


def twisted_queue(leg: Leg, write: Callable[[bytes], None]) -> None:
    leg.transport.write(b"queued by twisted;")
    write(b"after it")


def lose(leg: Leg, write: Callable[[bytes], None]) -> None:
    leg.transport.loseConnection()
    write(b"after loseConnection")


def closed(leg: Leg, write: Callable[[bytes], None]) -> None:
    leg.transport.connectionLost(failure.Failure(error.ConnectionDone()))
    write(b"after close")


class WriterAgreementTests(SynchronousTestCase):
    skip = None if speedups is not None else "pgpool_tw.engine._speedups is not built"

    def setUp(self) -> None:
        self.reactor = epollreactor.EPollReactor()  # never run: only its write set is read
        self.addCleanup(self.reactor._poller.close)
        self.addCleanup(self.reactor.waker.connectionLost, None)
        self.addCleanup(self.reactor.removeAll)

    def outcomes(self, *steps: Step) -> dict[str, list[tuple[int, bytes]]]:
        """What each writer sent at once (its length) and left queued, after each step."""
        out: dict[str, list[tuple[int, bytes]]] = {}
        for name, in_c in (("python", False), ("c", True)):
            leg = Leg(self, self.reactor, in_c)
            kind = type(leg.write).__name__
            self.assertEqual(kind == "SendNow", in_c, f"{name} writer is {kind}")
            seen = []
            for step in steps:
                leg.write(b"first;")
                step(leg, leg.write)
                seen.append((len(leg.received()), leg.queued()[-40:]))
            out[name] = seen
        return out

    def agree(self, *steps: Step) -> list[tuple[int, bytes]]:
        out = self.outcomes(*steps)
        self.assertEqual(out["c"], out["python"])
        return out["c"]

    def test_nothing_queued_sends_at_once(self) -> None:
        """With nothing queued both send now and queue nothing."""
        self.assertEqual(self.agree(lambda leg, write: write(b"x")), [(7, b"")])

    def test_twisted_queue_keeps_order(self) -> None:
        """While Twisted has bytes queued both queue behind them, in order."""
        ((sent, queued),) = self.agree(twisted_queue)
        self.assertEqual((sent, queued), (6, b"queued by twisted;after it"))

    def test_full_kernel_rest_queued(self) -> None:
        """What the kernel does not take goes to Twisted; later writes queue behind it."""
        ((sent, queued),) = self.agree(fill_kernel, lambda leg, write: None)[:1]
        self.assertEqual(queued, b"k" * 40)
        self.assertGreater(sent, 0)

    def test_pending_lose_connection_queues(self) -> None:
        """After loseConnection neither writer sends past Twisted."""
        ((sent, queued),) = self.agree(lose)
        self.assertEqual(sent, 6)

    def test_closed_connection_sends_nothing(self) -> None:
        """After the connection closed neither writer sends, nor raises."""
        ((sent, _),) = self.agree(closed)
        self.assertEqual(sent, 6)

    def test_closed_socket_number_given_to_another_gets_nothing(self) -> None:
        """A write after close never reaches the connection that got the same fd number."""
        for in_c in (False, True):
            leg = Leg(self, self.reactor, in_c)
            number = leg.transport.fileno()
            leg.transport.connectionLost(failure.Failure(error.ConnectionDone()))
            other, other_peer = socket.socketpair()
            self.addCleanup(other.close)
            self.addCleanup(other_peer.close)
            other_peer.setblocking(False)
            self.assertEqual(other.fileno(), number, "the kernel reuses the lowest free number")
            leg.write(b"not yours")
            self.assertRaises(BlockingIOError, other_peer.recv, 100)


class CWriterChoiceTests(SynchronousTestCase):
    def test_python_writer_without_the_epoll_reactor(self) -> None:
        """c_writer declines a transport whose reactor's write set it cannot read."""

        class NotEpoll:
            _writes: set[int] = set()

        transport = tcp.Connection(socket.socket(), Protocol(), NotEpoll())
        self.addCleanup(transport.socket.close)
        self.assertIsNone(c_writer(transport))
