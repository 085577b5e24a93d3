"""Opening connections to a backend node: a server connection to pool, or any other.

Owns: the ClientFactory that builds the one ``BackendProtocol`` of a connection attempt
and reports a failed attempt to its owner, and the choice of TCP or the node's unix
socket (``connect``, which ``session/cancel.py`` uses for its one-shot CancelRequest
connections).  What a server connection does once it is up is ``backend.py``'s.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.book import ServerBook
from pgpool_tw.protocol.startup import StartupMessage

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
