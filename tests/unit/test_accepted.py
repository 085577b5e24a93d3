"""Tests for pgpool_tw.net.accepted: closing a client connection without a loop turn."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import error, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.net import accepted


class FakeFDReactor:
    """Records what a transport asks of an IReactorFDSet; never polls."""

    def __init__(self) -> None:
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.reasons: list[Failure] = []

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reasons.append(reason)


class CloseTests(SynchronousTestCase):
    def setUp(self) -> None:
        ours, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.reactor = FakeFDReactor()
        self.protocol = Recorder()
        self.transport = tcp.Connection(ours, self.protocol, self.reactor)  # type: ignore[arg-type]
        self.transport.connected = True
        self.protocol.makeConnection(self.transport)
        self.transport.startReading()

    def test_idle_connection_closed_at_once(self) -> None:
        """Nothing queued: connectionLost (ConnectionDone) runs before close returns."""
        accepted.close(self.transport)
        self.assertEqual(len(self.protocol.reasons), 1)
        self.assertTrue(self.protocol.reasons[0].check(error.ConnectionDone))
        self.assertEqual(self.reactor.readers, set())
        self.assertEqual(self.reactor.writers, set())
        self.assertEqual(self.peer.recv(10), b"")  # an orderly FIN, no reset

    def test_queued_data_is_written_first(self) -> None:
        """Data still queued: the ordinary loseConnection, which drains it before closing."""
        self.transport.write(b"pending")
        accepted.close(self.transport)
        self.assertEqual(self.protocol.reasons, [])
        self.assertTrue(self.transport.disconnecting)
        self.assertIn(self.transport, self.reactor.writers)

    def test_registered_producer_waits(self) -> None:
        """A registered producer keeps the connection open until it is unregistered."""
        self.transport.registerProducer(Protocol(), True)
        accepted.close(self.transport)
        self.assertEqual(self.protocol.reasons, [])
        self.assertTrue(self.transport.disconnecting)

    def test_second_close_is_harmless(self) -> None:
        """Closing again after the connection is gone does nothing."""
        accepted.close(self.transport)
        accepted.close(self.transport)
        self.assertEqual(len(self.protocol.reasons), 1)

    def test_other_transports_lose_connection(self) -> None:
        """A transport that is not a plain socket gets its own loseConnection."""
        transport = StringTransport()
        accepted.close(transport)
        self.assertTrue(transport.disconnecting)
