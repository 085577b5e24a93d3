"""Opening connections to a backend node: a server connection to pool, or a CancelRequest.

Owns: the ClientFactory that builds the one ``BackendProtocol`` of a connection attempt
and reports a failed attempt to its owner, the choice of TCP or the node's unix socket,
and the one-shot connection that delivers a CancelRequest with the server's own pid and
key.  What a server connection does once it is up is ``backend.py``'s.

Must never: reuse a connection for a CancelRequest, or send one with the pooler's keys.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.book import ServerBook
from pgpool_tw.protocol.startup import StartupMessage, cancel_request

if TYPE_CHECKING:
    from pgpool_tw.pool.backend import ServerOwner

log = Logger()


class BackendFactory(ClientFactory):
    """Builds the one BackendProtocol of one connection attempt."""

    noisy = False

    def __init__(
        self, node: BackendNode, owner: ServerOwner, build: Callable[[], BackendProtocol]
    ) -> None:
        self.node = node
        self.owner = owner
        self.build = build

    def buildProtocol(self, addr: Any) -> BackendProtocol:
        server = self.build()
        server.owner = self.owner
        server.factory = self
        return server

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.owner.server_connect_failed(self.node, reason.getErrorMessage())


def connect(reactor: Any, node: BackendNode, factory: ClientFactory, timeout: float = 30) -> Any:
    """Connect over TCP, or over the unix socket when the host name is a directory."""
    if node.is_unix:
        return reactor.connectUNIX(
            f"{node.hostname.rstrip('/')}/.s.PGSQL.{node.port}", factory, timeout=timeout
        )
    return reactor.connectTCP(node.hostname, node.port, factory, timeout=timeout)


def connect_server(
    reactor: Any,
    node: BackendNode,
    startup: StartupMessage,
    owner: ServerOwner,
    book: Optional[ServerBook] = None,
    tls: Optional[Any] = None,
    tls_required: bool = False,
    timeout: float = 30,
) -> Any:
    """Start a new server connection for ``owner``; returns the connector (to abort it).

    ``tls`` is a client-side TLS creator: the pooler then sends SSLRequest first
    and refuses to go on in plaintext when ``tls_required``.
    """
    build = functools.partial(BackendProtocol, node, startup, reactor, book, tls, tls_required)
    return connect(reactor, node, BackendFactory(node, owner, build), timeout)


class _CancelSender(Protocol):
    transport: Any

    def __init__(self, packet: bytes) -> None:
        self.packet = packet

    def connectionMade(self) -> None:
        self.transport.write(self.packet)
        self.transport.loseConnection()


class _CancelFactory(ClientFactory):
    noisy = False

    def __init__(self, node: BackendNode, pid: int, key: int) -> None:
        self.node = node
        self.pid = pid
        self.key = key

    def buildProtocol(self, addr: Any) -> _CancelSender:
        return _CancelSender(cancel_request(self.pid, self.key))

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        log.warn(
            "server={server} cancel for pid {pid} not delivered: {why}",
            server=self.node.address,
            pid=self.pid,
            why=reason.getErrorMessage(),
        )


def send_cancel(reactor: Any, node: BackendNode, pid: int, key: int) -> None:
    """Deliver a CancelRequest with the server's own pid and key on a fresh connection."""
    connect(reactor, node, _CancelFactory(node, pid, key), timeout=10)
