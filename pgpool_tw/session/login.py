"""The two password exchanges a login may hold: the pooler's own, and a new server's.

``PasswordCheck`` is the pooler authenticating the client itself (enable_pool_hba:
pgpool-II's ClientAuthentication through ``clientauth.py``).  ``ServerLogin`` is a
new server connection's authentication request during ``CONNECTING``: answered
from pool_passwd when the pooler checked the client, relayed to the client
otherwise (without SCRAM-SHA-256-PLUS, since the client's TLS ends here).  Both
only frame client messages and tell their ``Session`` (machine.py) what
happened; the session moves the state.

Must never mark a client verified unless the hba rule was trust or the exchange
succeeded in this very login, and never hand the client's password to anybody
but the server that asked for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.backend_auth import BackendAuth
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session import clientauth
from pgpool_tw.session.states import CLOSED, CONNECTING

if TYPE_CHECKING:
    from pgpool_tw.config.settings import BackendNode
    from pgpool_tw.pool.backend import BackendProtocol
    from pgpool_tw.session.machine import Session


log = Logger()


def _frames(session: Session, reader: m.MessageReader, data: bytes) -> list[tuple[int, bytes]]:
    """Whole client messages of a login phase; a framing error ends the connection."""
    try:
        return reader.feed(data)
    except ProtocolViolation as e:
        session.fatal(e.sqlstate, e.message)
        return []


class PasswordCheck:
    """The pooler's own check of a client against pool_hba.conf and pool_passwd."""

    __slots__ = ("_reader", "login", "session")

    def __init__(self, session: Session, login: clientauth.Login) -> None:
        self.session = session
        self.login = login
        self._reader: Optional[m.MessageReader] = None

    @classmethod
    def begin(
        cls,
        session: Session,
        startup: StartupMessage,
        host: Optional[str],
        common_name: Optional[str],
    ) -> Optional[PasswordCheck]:
        """The rule for this connection; None when it refused the client (already told)."""
        config = session.context.config
        login = clientauth.begin(
            session.context.auth_files,
            config.allow_clear_text_frontend_auth,
            startup.user,
            startup.database,
            host,
            session.ssl,
            common_name,
        )
        if isinstance(login, bytes):
            session.io.send(login)
            session.io.close()
            return None
        return cls(session, login)

    @property
    def exchanging(self) -> bool:
        """The rule asks for a password (not trust)."""
        return self.login.exchange is not None

    def start(self, early: bytes) -> None:
        """Ask for the password; ``early`` is what the client sent after its startup."""
        exchange = self.login.exchange
        assert exchange is not None
        self._reader = m.MessageReader()
        self.session.io.send(exchange.start())
        if early:
            self.client_data(early)

    def client_data(self, data: bytes) -> None:
        """The client's answers to the pooler's own password request."""
        login, reader, session = self.login, self._reader, self.session
        assert login.exchange is not None and reader is not None
        for kind, body in _frames(session, reader, data):
            if kind == m.TERMINATE:
                session.io.close()
                return
            if kind != m.PASSWORD_MESSAGE:
                session.fatal("08P01", f"expected a password response, got {chr(kind)!r}")
                return
            reply, result = login.exchange.receive(body)
            if reply:
                session.io.send(reply)
            if result is None:
                continue
            if not result.ok:
                log.info(
                    "client={client} user={user} authentication failed",
                    client=session.peer,
                    user=login.user,
                )
                session.io.send(result.error_response())
                session.io.close()
                return
            login.verified = True
            login.client_key = result.client_key
            login.exchange = None
            self._reader = None
            session.password_accepted(reader.take_rest())
            return


class ServerLogin:
    """A new server connection's login for one client: the server's owner until it is up.

    It answers the server's authentication requests from pool_passwd when the
    pooler checked the client, relays them otherwise, forwards the client's
    password messages, and reports the outcome to its session:
    ``server_said_ok``, ``server_logged_in``, or a FATAL for the client.
    """

    __slots__ = (
        "_asked_client",
        "_backend_auth",
        "_reader",
        "_retried",
        "connector",
        "server",
        "session",
    )

    def __init__(self, session: Session, check: Optional[PasswordCheck], retried: bool) -> None:
        self.session = session
        self._reader = m.MessageReader()
        #: Answers from pool_passwd, when the pooler checks clients itself.
        self._backend_auth: Optional[BackendAuth] = (
            check.login.backend_auth() if check is not None else None
        )
        #: This is server_tls_sslmode=allow's second try, over TLS.
        self._retried = retried
        #: The connection attempt, until the server is up or refused (to abort it).
        self.connector: Any = None
        #: The server's password request went to the client: only a password may come.
        self._asked_client = False
        self.server: Optional[BackendProtocol] = None

    def abandon(self) -> None:
        """The client left while the server was still connecting."""
        if self.connector is not None:
            self.connector.disconnect()

    def _live(self) -> bool:
        return self.session.state == CONNECTING and self.session.server_login is self

    # -- the client ------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Client messages while a new server authenticates it: passwords go through."""
        session = self.session
        for kind, body in _frames(session, self._reader, data):
            server = self.server
            if kind == m.PASSWORD_MESSAGE and server is not None:
                server.send(m.message(b"p", body))
            elif kind == m.TERMINATE:
                session.io.close()
                return
            elif not self._asked_client:
                # Sent with the startup packet, before any password was asked of it (a
                # driver pipelining its first statement): kept for after the login, as
                # PostgreSQL keeps it.
                session.keep(m.message(bytes((kind,)), body))
            else:
                session.fatal("08P01", f"unexpected message {chr(kind)!r} during authentication")
                return

    # -- backend.ServerOwner -----------------------------------------------------------

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        """A server's login message: answered from pool_passwd, or relayed to the client."""
        self.server = server
        if not self._live():
            return
        session = self.session
        if raw[0] != m.AUTHENTICATION:
            session.io.send(raw)  # a notice
        elif self._backend_auth is not None:
            why = server.answer(self._backend_auth, raw)
            if why:
                self._refused(server, why)
        elif session.auth_ok_sent:
            # The pooler authenticated the client; there is nobody to relay to.
            self._refused(server, f'pool_passwd has no entry for user "{server.startup.user}"')
        else:
            self._asked_client = True
            session.io.send(m.without_channel_binding(raw))

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        self.server = server
        self.session.server_said_ok(raw)

    def server_ready(self, server: BackendProtocol) -> None:
        self.connector = None
        self.session.server_logged_in(server)

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        """The server refused the login; the client gets the server's own words.

        With server_tls_sslmode = allow, a plaintext login refused before any
        authentication request (a hostssl-only server) is tried once more over TLS.
        """
        self.server = None
        self.connector = None
        session = self.session
        if self._live() and not server.spoke and not server.encrypted and not self._retried:
            retry = session.context.tls.for_allow_retry(server.node)
            if retry is not None:
                session.connect(retry)
                return
        if session.state != CLOSED:
            session.io.send(raw)
            session.io.close()
        sqlstate = m.parse_fields(raw[5:]).get("C", "")
        if sqlstate.startswith("57P"):  # shutting down, starting up, in recovery
            session.context.server_failed(server.node.index, f"login refused: {sqlstate}")

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        self.server = None
        if self._live():
            self.session.server_lost(server, why)  # its words for a login cut short

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self.connector = None
        session = self.session
        session.context.events.backend_status(node.address, "unreachable")
        session.context.server_failed(node.index, why)
        log.warn(
            "client={client} server={server} unreachable: {why}",
            client=session.peer,
            server=node.address,
            why=why,
        )
        session.fatal("08006", f'could not connect to server at "{node.address}": {why}')

    def _refused(self, server: BackendProtocol, why: str) -> None:
        """The pooler cannot answer the server's password request for this client."""
        log.warn("client={client} server login failed: {why}", client=self.session.peer, why=why)
        server.transport.abortConnection()
        self.session.fatal("28000", f"the pooler cannot log in to the server: {why}")
