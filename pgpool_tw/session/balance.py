"""Opening a session's load-balancing server: its second leg, never the client's business.

A routed session logs in on the primary as any session does (the client takes part
in that login).  Its load-balancing node's server is then taken from the pool or
logged in by the pooler alone: a password request is answered from pool_passwd
when the pooler checked the client itself, and otherwise cannot be answered.
Whatever goes wrong here costs the session its load balancing, never the
session: it reads from the primary, and the log says why once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger

from pgpool_tw.pool.key import PoolKey
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.backend_auth import BackendAuth
from pgpool_tw.protocol.sql import set_application_name
from pgpool_tw.session.states import CLOSED

if TYPE_CHECKING:
    from pgpool_tw.config.settings import BackendNode
    from pgpool_tw.pool.backend import BackendProtocol
    from pgpool_tw.session.machine import Session

log = Logger()


class BalanceLeg:
    """The load-balancing server of one session, from the pool or a new login.

    The new server's owner while it logs in (``pool.backend.ServerOwner``), and
    its keeper while ``SET application_name`` runs on a reused one.
    """

    __slots__ = ("session", "key", "server", "connector", "_auth", "_done")

    def __init__(self, session: Session, key: PoolKey, auth: Optional[BackendAuth]) -> None:
        self.session = session
        self.key = key
        self.server: Optional[BackendProtocol] = None
        self.connector: Optional[object] = None
        self._auth = auth
        self._done = False

    def open(self) -> None:
        session = self.session
        session.context.pool.acquire(self.key, self._acquired, session.verified)

    def abandon(self) -> None:
        """The session ended first: what this leg holds goes back or away."""
        self._done = True
        connector, self.connector = self.connector, None
        if connector is not None:
            connector.disconnect()  # type: ignore[attr-defined]
        server, self.server = self.server, None
        if server is not None:
            server.keeper = None
            server.owner = None
            self.session.context.pool.give_back(server, server.connected_ok)

    def _acquired(self, server: Optional[BackendProtocol]) -> None:
        session = self.session
        if self._done or session.state == CLOSED:
            if server is not None:
                session.context.pool.give_back(server, True)
            return
        if server is None:
            self._connect()
            return
        self.server = server
        server.owner = None
        server.keeper = self
        startup = session.startup
        assert startup is not None
        wanted = startup.application_name
        if server.params.get("application_name", "") == wanted:
            self._finish(server)
            return
        server.run([set_application_name(wanted)], self._name_set)

    def _name_set(self, server: BackendProtocol, ok: bool) -> None:
        if self._done:
            return
        if ok:
            self._finish(server)
            return
        self.server = None
        server.keeper = None
        self.session.context.pool.give_back(server, False)
        self._connect()

    def _connect(self) -> None:
        session = self.session
        node = session.context.cluster.get(self.key.node)
        startup = session.startup
        if node is None or startup is None:
            self._failed("the node is no longer configured")
            return
        self.connector = session.context.connect(node.backend, startup, self)

    def _finish(self, server: BackendProtocol) -> None:
        self._done = True
        self.server = None
        server.keeper = None
        self.session.balance_ready(server)

    def _failed(self, why: str) -> None:
        if self._done:
            return
        self._done = True
        log.warn(
            "client={client} load balancing off for this session: node {node}: {why}",
            client=self.session.peer,
            node=self.key.node,
            why=why,
        )
        self.session.balance_ready(None)

    # -- pool.backend.ServerOwner (a new login) and ServerKeeper (a reused server) --------

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        self.server = server
        if self._done or raw[0] != m.AUTHENTICATION:
            return  # a notice during login: the client never sees this leg's login
        auth = self._auth
        if auth is None:
            self._refuse(server, "the server asks for a password and pool_passwd cannot answer")
            return
        why = server.answer(auth, raw)
        if why:
            self._refuse(server, why)

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        self.server = server

    def server_ready(self, server: BackendProtocol) -> None:
        self.connector = None
        self.session.context.node_up(server.node)
        if self._done:
            self.session.context.pool.give_back(server, True)
            return
        self._finish(server)

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        self.server = None
        self.connector = None
        fields = m.parse_fields(raw[5:]) if raw[:1] == b"E" else {}
        self._failed(f"login refused: {fields.get('M', 'no reason given')}")

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        self.server = None
        self._failed(f"server closed the connection: {why}")

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self.connector = None
        self.session.context.events.backend_status(node.address, "unreachable")
        self.session.context.server_failed(node.index, why)
        self._failed(f"cannot connect to {node.address}: {why}")

    def _refuse(self, server: BackendProtocol, why: str) -> None:
        self.server = None
        server.transport.abortConnection()
        self._failed(why)
