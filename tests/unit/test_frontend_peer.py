"""Tests for how a client session names its peer in logs and events."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.settings import Config
from pgpool_tw.pool.pool import Pool
from pgpool_tw.session.frontend import FrontendFactory, FrontendProtocol


def factory() -> FrontendFactory:
    config = Config()
    clock = Clock()
    return FrontendFactory(config, Pool(config, clock), clock)


class PeerTests(SynchronousTestCase):
    def test_tcp_address_from_the_listener(self) -> None:
        """A TCP client is named host:port from the address the listener accepted."""
        client = factory().buildProtocol(IPv4Address("TCP", "10.1.2.3", 50000))
        self.assertEqual(client.peer, "10.1.2.3:50000")

    def test_ipv6_address(self) -> None:
        """An IPv6 client is named by its numeric address and port."""
        client = factory().buildProtocol(IPv6Address("TCP", "::1", 50001))
        self.assertEqual(client.peer, "::1:50001")

    def test_unix_socket_is_local(self) -> None:
        """A unix-socket client is named "local"."""
        client = factory().buildProtocol(UNIXAddress(b"/tmp/.s.PGSQL.9999"))
        self.assertEqual(client.peer, "local")

    def test_without_address_the_transport_is_asked(self) -> None:
        """Built without an address, the session asks its transport, or says "?"."""
        client = FrontendProtocol(factory())
        self.assertEqual(client.peer, "?")
        client.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.9.8.7", 4242))
        self.assertEqual(client.peer, "10.9.8.7:4242")
