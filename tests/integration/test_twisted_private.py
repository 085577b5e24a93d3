"""pgpool_tw.net.twisted_private against trial's real reactor and loopback sockets.

Each test proves one version note of the adapter true on the installed Twisted:
if a Twisted release moves what the adapter reads, these fail (or the function
returns its "missing" answer, which the tests also check).
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.internet import defer, error, reactor, ssl, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

import twisted
from pgpool_tw.net import twisted_private as tp


class Recorder(Protocol):
    """Keeps what arrives and how the connection ended."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Optional[Failure] = None
        self.arrived: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.arrived.called:
            self.arrived.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Recorders(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        protocol.factory = self
        self.built.append(protocol)
        return protocol


def _turn() -> defer.Deferred[None]:
    """One pass of the reactor (a queued write is flushed in it)."""
    return task.deferLater(reactor, 0, lambda: None)


@defer.inlineCallbacks
def receive(client: socket.socket, size: int) -> Any:
    """``size`` bytes from a raw client, letting the reactor run while they come."""
    received = b""
    while len(received) < size:
        try:
            received += client.recv(size - len(received), socket.MSG_DONTWAIT)
        except BlockingIOError:
            yield _turn()
    return received


class AdapterTestCase(unittest.TestCase):
    """A listening port on loopback and blocking raw clients."""

    timeout = 60

    def listen(self) -> tuple[Any, Recorders]:
        factory = Recorders()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port, factory

    def raw_client(self, port: Any) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def connected(self) -> Any:
        """(server-side Recorder, raw client socket), once Twisted has accepted."""
        port, factory = self.listen()
        client = self.raw_client(port)
        while not factory.built:
            yield _turn()
        server = factory.built[0]
        self.addCleanup(server.transport.abortConnection)
        return server, client


class VersionTests(unittest.SynchronousTestCase):
    def test_installed_twisted_was_checked(self) -> None:
        """The installed Twisted is one the adapter's notes were read against."""
        self.assertIn(twisted.__version__, tp.CHECKED_ON)


class EpollTests(AdapterTestCase):
    def setUp(self) -> None:
        parts = tp.epoll_parts(reactor)
        if parts is None:
            raise unittest.SkipTest("trial is not running the epoll reactor")
        self.parts = parts

    def test_other_reactors_have_no_parts(self) -> None:
        """A reactor that is not the epoll one gives None (callers keep Twisted's loop)."""
        self.assertIsNone(tp.epoll_parts(MemoryReactor()))

    def test_selectables_map_fds_to_ports(self) -> None:
        """``selectables`` maps a listening port's fd to the port."""
        port, _ = self.listen()
        self.assertIs(self.parts.selectables[port.fileno()], port)

    @defer.inlineCallbacks
    def test_writes_hold_fds_with_queued_data(self) -> Any:
        """``writes`` holds a transport's fd while Twisted has its data queued."""
        server, client = yield self.connected()
        fd = server.transport.fileno()
        self.assertNotIn(fd, self.parts.writes)
        server.transport.write(b"queued")
        self.assertIn(fd, self.parts.writes)
        received = yield receive(client, len(b"queued"))
        self.assertEqual(received, b"queued")
        self.assertNotIn(fd, self.parts.writes)

    def test_poller_is_the_reactors_epoll(self) -> None:
        """``poller`` is an epoll object that answers a zero-timeout poll."""
        self.assertGreaterEqual(self.parts.poller.fileno(), 0)
        self.assertIsInstance(self.parts.poller.poll(0, 1), list)

    @defer.inlineCallbacks
    def test_replaced_iteration_runs_and_is_restored(self) -> Any:
        """A replaced ``doIteration`` is what the running loop polls with; restoring ends that."""
        own = reactor.doIteration
        calls: list[Optional[float]] = []

        def step(delay: Optional[float]) -> None:
            calls.append(delay)
            own(delay)

        self.assertTrue(tp.replace_iteration(reactor, step))
        self.addCleanup(tp.restore_iteration, reactor)
        self.assertFalse(tp.replace_iteration(reactor, step))
        yield self.connected()  # Twisted accepts only when a poll reports it
        self.assertTrue(calls)
        tp.restore_iteration(reactor)
        before = len(calls)
        yield self.connected()
        self.assertEqual(len(calls), before)


class TransportTests(AdapterTestCase):
    @defer.inlineCallbacks
    def test_idle_writer_sends_before_returning(self) -> Any:
        """Nothing queued: the writer's bytes are in the peer's buffer when it returns."""
        server, client = yield self.connected()
        write = tp.send_now_writer(server.transport)
        assert write is not None
        write(b"now")
        self.assertEqual(client.recv(100, socket.MSG_DONTWAIT), b"now")

    @defer.inlineCallbacks
    def test_writer_queues_behind_twisted(self) -> Any:
        """Data queued by Twisted: the writer queues too, so the order is kept."""
        server, client = yield self.connected()
        write = tp.send_now_writer(server.transport)
        assert write is not None
        server.transport.write(b"first,")
        write(b"second")
        self.assertRaises(BlockingIOError, client.recv, 100, socket.MSG_DONTWAIT)
        received = yield receive(client, len(b"first,second"))
        self.assertEqual(received, b"first,second")

    def test_writer_needs_a_socket_transport(self) -> None:
        """A transport without Twisted's write queue gets no send-now writer."""
        self.assertIsNone(tp.send_now_writer(StringTransport()))

    @defer.inlineCallbacks
    def test_close_at_once(self) -> Any:
        """An idle transport closes before the call returns: ConnectionDone, peer sees EOF."""
        server, client = yield self.connected()
        self.assertTrue(tp.close_at_once(server.transport))
        assert server.lost is not None
        self.assertTrue(server.lost.check(error.ConnectionDone))
        self.assertEqual(client.recv(100, socket.MSG_DONTWAIT), b"")

    @defer.inlineCallbacks
    def test_close_at_once_leaves_queued_data(self) -> Any:
        """Queued data: nothing is closed and the bytes still arrive."""
        server, client = yield self.connected()
        server.transport.write(b"pending")
        self.assertFalse(tp.close_at_once(server.transport))
        self.assertIsNone(server.lost)
        received = yield receive(client, len(b"pending"))
        self.assertEqual(received, b"pending")

    def test_close_at_once_needs_a_socket_transport(self) -> None:
        """A transport without Twisted's socket internals is left to loseConnection."""
        transport = StringTransport()
        self.assertFalse(tp.close_at_once(transport))
        self.assertFalse(transport.disconnecting)

    def test_listening_socket(self) -> None:
        """A listening TCP port's socket is the one bound to its port number."""
        port, _ = self.listen()
        skt = tp.listening_socket(port)
        assert skt is not None
        self.assertEqual(skt.getsockname()[1], port.getHost().port)
        self.assertIsNone(tp.listening_socket(object()))


class AdoptTests(AdapterTestCase):
    @defer.inlineCallbacks
    def adopt(self, use_port: bool) -> Any:
        """Accept off a port Twisted does not read, adopt it, send a byte through it."""
        port, factory = self.listen()
        port.stopReading()
        client = self.raw_client(port)
        listener = tp.listening_socket(port)
        assert listener is not None
        skt, addr = listener.accept()
        skt.setblocking(False)
        owner = port if use_port else object()
        self.sessions_before = port.sessionno
        protocol = tp.adopt_socket(owner, skt, addr, factory, reactor)
        self.assertIsInstance(protocol, Recorder)
        self.addCleanup(protocol.transport.abortConnection)
        self.assertEqual(protocol.transport.getPeer().port, client.getsockname()[1])
        client.sendall(b"hi")
        yield protocol.arrived
        self.assertEqual(protocol.received, b"hi")
        protocol.transport.write(b"back")
        received = yield receive(client, len(b"back"))
        self.assertEqual(received, b"back")
        return port, protocol

    @defer.inlineCallbacks
    def test_adopted_as_port_does(self) -> Any:
        """With the port's parts: a transport that belongs to the port, as its doRead makes."""
        port, protocol = yield self.adopt(use_port=True)
        self.assertEqual(protocol.transport.getHost().port, port.getHost().port)
        self.assertIs(protocol.transport.server, port)
        self.assertEqual(protocol.transport.sessionno, self.sessions_before)
        self.assertEqual(port.sessionno, self.sessions_before + 1)

    @defer.inlineCallbacks
    def test_adopted_publicly_without_port_parts(self) -> Any:
        """Without them: adoptStreamConnection builds a working transport instead."""
        port, protocol = yield self.adopt(use_port=False)
        self.assertEqual(protocol.transport.getHost().port, port.getHost().port)


class TLSOptionTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        try:
            from OpenSSL import SSL
        except ImportError:
            raise unittest.SkipTest("pyOpenSSL is not installed") from None
        self.flag = SSL.OP_CIPHER_SERVER_PREFERENCE

    def context_has_flag(self, options: Any) -> bool:
        # set_options(0) adds nothing and returns the context's current bits.
        return bool(options.getContext().set_options(0) & self.flag)

    def test_clear_option(self) -> None:
        """A cleared bit is missing from the context; Twisted sets it otherwise."""
        options = ssl.CertificateOptions()
        self.assertTrue(tp.clear_option(options, self.flag))
        self.assertFalse(self.context_has_flag(options))
        self.assertTrue(self.context_has_flag(ssl.CertificateOptions()))

    def test_too_late_once_the_context_is_built(self) -> None:
        """After getContext the bit cannot be cleared, and the call says so."""
        options = ssl.CertificateOptions()
        options.getContext()
        self.assertFalse(tp.clear_option(options, self.flag))
        self.assertTrue(self.context_has_flag(options))
