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

from pgpool_tw.logs.escape import printable
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
                session.context.preauth.note_failed(session.peer, login.user, "pool_passwd")
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
        "_timer",
        "connector",
        "node",
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
        #: The node it logs in to, and connect_timeout while the login waits on the
        #: server (not while the client types its password): None when not running.
        self.node: Optional[BackendNode] = None
        self._timer: Any = None

    def start(self, node: BackendNode, connector: Any) -> None:
        """The connection attempt is under way: connect_timeout counts from now."""
        self.node = node
        self.connector = connector
        self._wait_server()

    def _wait_server(self) -> None:
        """The login waits on the server: (re)start connect_timeout."""
        timeout = self.session.context.config.connect_timeout
        if timeout <= 0:
            return
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(timeout)
        else:
            self._timer = self.session.context.reactor.callLater(timeout, self._server_silent)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _server_silent(self) -> None:
        """connect_timeout passed with the server silent: the client is told which server
        did not answer (08006 when it could not even be reached, 57P03 when it took the
        connection but not the login), the log names the server, and the attempt ends."""
        self._timer = None
        node, connector, session = self.node, self.connector, self.session
        if node is None or not self._live():
            return
        timeout = session.context.config.connect_timeout
        transport: Any = getattr(connector, "transport", None)
        reached = getattr(connector, "state", "") == "connected" and transport is not None
        self.connector = None
        self.node = None  # the failure the abort below causes is this one, already told
        ms = f"{timeout * 1000:g} ms"
        if reached:
            log.warn(
                "server={server} took the connection but did not answer the login within "
                "connect_timeout ({ms}): client={client} refused",
                server=node.address,
                ms=ms,
                client=session.peer,
            )
            transport.abortConnection()
            session.fatal(
                "57P03",
                f'the server at "{node.address}" did not answer the login within '
                f"connect_timeout ({ms})",
            )
            return
        if connector is not None:
            connector.stopConnecting()
        self._unreachable(node, f"timeout expired (connect_timeout {ms})")

    def abandon(self) -> None:
        """The client left while the server was still connecting."""
        self._stop_timer()
        if self.connector is not None:
            self.connector.disconnect()

    def stage(self) -> str:
        """What this login waits for, for authentication_timeout's log line."""
        if self._asked_client:
            return "the client's password (asked by the server)"
        return f"the server at {self.node.address if self.node is not None else '?'} to log in"

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
                session.context.preauth.answered(session)
                self._wait_server()
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
            self._wait_server()
        elif self._backend_auth is not None:
            self._wait_server()
            why = server.answer(self._backend_auth, raw)
            if why:
                self._refused(server, why)
        elif session.auth_ok_sent:
            # The pooler authenticated the client; there is nobody to relay to.
            self._refused(server, f'pool_passwd has no entry for user "{server.startup.user}"')
        else:
            self._asked_client = True
            self._stop_timer()  # the client's turn: authentication_timeout's business
            session.context.preauth.asked(session)
            if session.key is not None:
                session.context.pool.learn_login(session.key, True)
            session.io.send(m.without_channel_binding(raw))

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        self.server = server
        self._wait_server()
        self.session.server_said_ok(raw)

    def server_ready(self, server: BackendProtocol) -> None:
        self._stop_timer()
        self.connector = None
        self.session.server_logged_in(server)

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        """The server refused the login; the client gets the server's own words.

        With server_tls_sslmode = allow, a plaintext login refused before any
        authentication request (a hostssl-only server) is tried once more over TLS.
        """
        self._stop_timer()
        self.server = None
        self.connector = None
        session = self.session
        fields = m.parse_fields(raw[5:])
        sqlstate = fields.get("C", "")
        if sqlstate == "53300" and self._live() and session.server_full():
            return  # a stalled login made room: this one is tried again
        if self._live() and not server.spoke and not server.encrypted and not self._retried:
            retry = session.context.tls.for_allow_retry(server.node)
            if retry is not None:
                session.connect(retry)
                return
        if session.state != CLOSED:
            session.io.send(raw)
            session.io.close()
        if sqlstate.startswith("28") and session.startup is not None:
            why = f"the server said {sqlstate}: {printable(fields.get('M', ''))}"
            session.context.preauth.note_failed(session.peer, session.startup.user, why)
        if sqlstate.startswith("57P"):  # shutting down, starting up, in recovery
            session.context.server_failed(server.node.index, f"login refused: {sqlstate}")

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        self._stop_timer()
        self.server = None
        if self._live() and self.node is not None:
            self.session.server_lost(server, why)  # its words for a login cut short

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self._stop_timer()
        self.connector = None
        if self.node is None:
            return  # connect_timeout ended it and told the client already
        self._unreachable(node, why)

    def _unreachable(self, node: BackendNode, why: str) -> None:
        """The server could not be reached: failover judges, the client is told."""
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
        log.warn(
            "client={client} server login failed: {why}",
            client=self.session.peer,
            why=printable(why),
        )
        server.transport.abortConnection()
        self.session.fatal("28000", f"the pooler cannot log in to the server: {why}")
