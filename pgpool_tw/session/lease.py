"""A transaction-mode client's server for its next transaction: borrowed, or logged in alone.

Once a transaction-mode client has logged in, its servers come from the pool key's leases
(``pool/leases.py``): an idle one at once, a place to open a new one, or a turn in the
queue (arrival order, ``query_wait_timeout``).  A new server logs in without the client,
who is past its login: a password request is answered from pool_passwd when the pooler
checked the client itself (``enable_pool_hba``), and otherwise cannot be answered: the
client is told so (transaction pooling in front of servers that ask for passwords needs
pool_passwd, as PgBouncer's needs its auth_file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from pgpool_tw.logs.escape import printable
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.backend_auth import BackendAuth
from pgpool_tw.protocol.startup import StartupMessage

if TYPE_CHECKING:
    from pgpool_tw.config.settings import BackendNode, Config
    from pgpool_tw.pool.backend import BackendProtocol
    from pgpool_tw.pool.key import PoolKey
    from pgpool_tw.session.context import SessionContext
    from pgpool_tw.session.machine import Session

log = Logger()


def query_wait_text(config: Config) -> str:
    """What a client that waited query_wait_timeout for a server is told (FATAL 53300)."""
    return (
        f"query_wait_timeout: no server connection was free for "
        f"{config.query_wait_timeout:g}s (default_pool_size = {config.default_pool_size})"
    )


class Borrow:
    """One request for a server: its waiting ticket, or the new server's login.

    The new server's owner while it logs in (``pool.backend.ServerOwner``).
    """

    __slots__ = ("session", "key", "auth", "ticket", "connector", "done")

    def __init__(self, session: Session, key: PoolKey, auth: Optional[BackendAuth]) -> None:
        self.session = session
        self.key = key
        self.auth = auth
        self.ticket: Optional[Any] = None
        self.connector: Optional[Any] = None
        self.done = False

    def start(self) -> None:
        self.ticket = self.session.context.pool.leases.lease(
            self.key, self._got, self._expired, True
        )

    def abandon(self) -> None:
        """The client left first."""
        if self.done:
            return
        self.done = True
        leases = self.session.context.pool.leases
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            leases.withdraw(ticket)
        connector, self.connector = self.connector, None
        if connector is not None:
            connector.disconnect()
            leases.open_failed(self.key)

    def _got(self, server: Optional[BackendProtocol]) -> None:
        self.ticket = None
        if self.done:
            if server is not None:
                self.session.context.pool.leases.release(server, True)
            else:
                self.session.context.pool.leases.open_failed(self.key)
            return
        if server is not None:
            self.done = True
            self.session.tx_server(server)
            return
        context = self.session.context
        node = context.cluster.get(self.key.node)
        startup = self.session.startup
        if node is None or startup is None:
            self._failed("08006", f"backend node {self.key.node} is no longer configured")
            return
        self.connector = context.connect(node.backend, startup, self)

    def _expired(self) -> None:
        self.ticket = None
        if self.done:
            return
        self.done = True
        self.session.tx_failed("53300", query_wait_text(self.session.context.config))

    def _failed(self, sqlstate: str, text: str) -> None:
        """The place reserved for a new server is given up; the client is told."""
        self.connector = None
        if self.done:
            return
        self.done = True
        self.session.context.pool.leases.open_failed(self.key)
        self.session.tx_failed(sqlstate, text)

    # -- pool.backend.ServerOwner: a new server's login --------------------------------

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        if self.done or raw[0] != m.AUTHENTICATION:
            return  # a notice during login: the client is past its own
        auth = self.auth
        if auth is None:
            server.transport.abortConnection()
            self._failed(
                "28000",
                "transaction pooling cannot open another server connection for user "
                f'"{self.key.user}": the server asks for a password and pool_passwd cannot '
                "answer (enable_pool_hba with a pool_passwd entry is needed)",
            )
            return
        why = server.answer(auth, raw)
        if why:
            server.transport.abortConnection()
            self._failed("28000", f"a new server connection's login failed: {why}")

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        pass

    def server_ready(self, server: BackendProtocol) -> None:
        self.connector = None
        context = self.session.context
        context.node_up(server.node)
        leases = context.pool.leases
        leases.opened(server)
        if self.done:
            leases.release(server, True)
            return
        self.done = True
        self.session.tx_server(server)

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        self.connector = None
        fields = m.parse_fields(raw[5:]) if raw[:1] == b"E" else {}
        code = fields.get("C", "08006")
        if code.startswith("57P0"):
            self.session.context.server_failed(server.node.index, fields.get("M", ""))
        self._failed(code, fields.get("M", "the server refused the login"))

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        self.connector = None
        self._failed("08006", f"server closed the connection during login: {why}")

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self.connector = None
        if self.done:
            return
        context = self.session.context
        context.events.backend_status(node.address, "unreachable")
        context.server_failed(node.index, why)
        self._failed("08006", f"cannot connect to {node.address}: {why}")


class Filler:
    """min_pool_size: one server for a pool key, logged in by the pooler alone.

    Its password, if the server asks one, comes from pool_passwd (md5 or text entries;
    a SCRAM entry stored as keys needs a client's own login).  The new server joins the
    key's idle servers; a failure gives its place back and is logged.
    """

    __slots__ = ("context", "key")

    def __init__(self, context: SessionContext, key: PoolKey) -> None:
        self.context = context
        self.key = key

    def open(self) -> None:
        node = self.context.cluster.get(self.key.node)
        if node is None:
            self.context.pool.leases.open_failed(self.key)
            return
        self.context.connect(node.backend, StartupMessage(self.key.params), self)

    def _failed(self, why: str) -> None:
        self.context.pool.leases.open_failed(self.key)
        log.warn(
            "min_pool_size: cannot open a server for user={user} database={database}: {why}",
            user=printable(self.key.user),
            database=printable(self.key.database),
            why=why,
        )

    # -- pool.backend.ServerOwner ---------------------------------------------------------

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        if raw[0] != m.AUTHENTICATION:
            return
        secret = self.context.auth_files.secrets.get(self.key.user)
        if secret is None:
            server.transport.abortConnection()
            self._failed("the server asks for a password and pool_passwd has no entry")
            return
        why = server.answer(BackendAuth(self.key.user, secret, None), raw)
        if why:
            server.transport.abortConnection()
            self._failed(why)

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        pass

    def server_ready(self, server: BackendProtocol) -> None:
        self.context.node_up(server.node)
        leases = self.context.pool.leases
        leases.opened(server)
        leases.release(server, True)

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        fields = m.parse_fields(raw[5:]) if raw[:1] == b"E" else {}
        self._failed(f"login refused: {fields.get('M', 'no reason given')}")

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        self._failed(f"server closed the connection during login: {why}")

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self._failed(f"cannot connect to {node.address}: {why}")
