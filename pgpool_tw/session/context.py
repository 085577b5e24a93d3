"""What every client session shares: settings, the pool, keys, TLS, the way to a server.

A ``Session`` (machine.py) reads its rules from here and asks it for the few
things that need the reactor: login timers and opening a server connection.
The Twisted factory (frontend.py) is this object plus ``buildProtocol``, so the
service swaps a reloaded configuration or new TLS contexts in one place.  Must
never hold per-session state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol

from pgpool_tw.cluster.cluster import UP, Cluster
from pgpool_tw.config.authfiles import AuthFiles
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.config.tls import TLSContexts
from pgpool_tw.net.deadlines import Deadlines
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.book import ServerBook
from pgpool_tw.pool.connector import connect_server
from pgpool_tw.pool.pool import Pool
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session.cancel import CancelRegistry
from pgpool_tw.stats.events import EventHub

if TYPE_CHECKING:
    from pgpool_tw.pool.backend import ServerOwner


class WarmLogins(Protocol):
    """The C loop's warm lane as sessions see it (lane/warm.py's ``WarmLane``)."""

    def learn(self, client: Any, server: BackendProtocol) -> None: ...
    def find(self, pid: int, secret: int) -> Optional[BackendProtocol]: ...


class SessionContext:
    """The state all client sessions of one service share."""

    def __init__(
        self, config: Config, pool: Pool, reactor: Any, events: Optional[EventHub] = None
    ) -> None:
        self.config = config
        #: The backend nodes, rebuilt from each configuration the service applies.
        self.cluster = Cluster.from_config(config)
        self.pool = pool
        self.reactor = reactor
        self.events = events if events is not None else EventHub()
        #: pool_hba.conf and pool_passwd (empty while enable_pool_hba is off).
        self.auth_files = AuthFiles()
        #: TLS contexts for both sides (a reload swaps in new ones).
        self.tls = TLSContexts()
        #: Live sessions by the cancel key their client was given.
        self.cancels: CancelRegistry[Any] = CancelRegistry()
        #: Open client connections, so a shutdown can wait for all of them.
        self.clients: set[Any] = set()
        self.servers = ServerBook(self.events)
        #: Every TCP port of this service set the client socket options for the
        #: clients it accepts (service.py); otherwise each client sets them.
        self.listeners_tuned = False
        #: Warm logins served by the C loop (service.py starts it under ``twistd pgpool``).
        self.warm: Optional[WarmLogins] = None
        self._login_deadlines: dict[float, Deadlines] = {}

    def login_deadlines(self, timeout: float) -> Deadlines:
        """The authentication_timeout timeouts of this length, on one shared timer.

        One queue per length, since a reload may change the setting while
        clients that started under the old one are still logging in.
        """
        deadlines = self._login_deadlines.get(timeout)
        if deadlines is None:
            deadlines = self._login_deadlines[timeout] = Deadlines(self.reactor, timeout)
        return deadlines

    def stop_timers(self) -> None:
        """The service stopped: leave no login timer scheduled on the reactor."""
        for deadlines in self._login_deadlines.values():
            deadlines.close()
        self._login_deadlines.clear()

    def use(self, config: Config) -> None:
        """A reload's configuration: new sessions read it; nodes keep their status."""
        old = self.cluster
        self.config = config
        self.cluster = Cluster.from_config(config)
        for node in self.cluster:
            before = old.get(node.index)
            if before is not None and before.address == node.address:
                self.cluster.set_status(node.index, before.status)

    def node_up(self, backend: BackendNode) -> None:
        """A server of ``backend`` finished a login: the node is up (pgpool-II's status)."""
        node = self.cluster.get(backend.index)
        if node is not None and node.status != UP:
            self.cluster.set_status(backend.index, UP)
        self.events.backend_status(backend.address, "up")

    def connect(
        self,
        node: BackendNode,
        startup: StartupMessage,
        owner: ServerOwner,
        tls_override: Optional[Any] = None,
    ) -> Any:
        """Open a server connection to ``node`` that logs in for ``owner``; its connector."""
        tls = self.tls
        return connect_server(
            self.reactor,
            node,
            startup,
            owner,
            self.servers,
            tls_override if tls_override is not None else tls.for_server(node),
            tls.server_tls_required,
        )
