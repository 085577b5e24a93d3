"""A client's login: from its first byte until a server connection is attached.

Owns the first half of a client session, ``STARTUP → WAITING → CONNECTING |
SETTING | AUTHENTICATING``, as pgpool-II's ``do_child`` does it for one client:
read the startup packet within authentication_timeout, answer SSLRequest and
GSSENCRequest, serve a CancelRequest, authenticate the client when pool_hba.conf
says so, then reuse a pooled server connection (``connect_using_existing_connection``)
or log in on a new one, relaying the server's authentication exchange.  The
session itself (attach, relay, detach) is ``frontend.FrontendProtocol``'s, which
extends this class; the state constants live here because the login sets most of
them.

It must never hand a client a server connection that asked for a password at
login: until the pooler authenticates clients itself, such connections serve
only the client that logged them in (the pool enforces it, see ``pool.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.net import accepted
from pgpool_tw.net.deadlines import Deadline
from pgpool_tw.net.transport import Writer
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.connector import connect_server, send_cancel
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.backend_auth import BackendAuth, BackendAuthError
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.sql import quote_literal
from pgpool_tw.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
)
from pgpool_tw.session import clientauth

if TYPE_CHECKING:
    from pgpool_tw.session.frontend import FrontendFactory

log = Logger()

#: What a client may send before its session is attached (it should send nothing).
MAX_EARLY_BYTES = 65536

# States.
STARTUP = 0
WAITING = 1  # startup read; waiting for a free client slot
CONNECTING = 2  # a new server connection logs in; its auth exchange is relayed
SETTING = 3  # a pooled server connection runs SET application_name
RELAY = 4
CLOSED = 5
AUTHENTICATING = 6  # the pooler checks the client's password against pool_passwd


class ClientLogin(Protocol):
    """A client connection until its session starts: the login half of ``FrontendProtocol``."""

    #: A TCP or unix stream transport (Twisted types it as an optional ITransport).
    transport: Any

    def __init__(self, factory: FrontendFactory, address: Any = None) -> None:
        self.factory = factory
        #: The client's address as the listener saw it (what getPeer() returns).
        self._address = address
        self.state = STARTUP
        #: True exactly while bytes are relayed; checked first on every chunk.
        self.relaying = False
        self.server: Optional[BackendProtocol] = None
        #: Sends now when nothing is queued (see transport.make_writer).
        self.send: Writer = discard
        self.startup: Optional[StartupMessage] = None
        #: The startup packet as received (a warm lane learns it; see warm.py).
        self.startup_raw: Optional[bytes] = None
        self.key: Any = None  # the pool key, once the startup packet is read
        self._buffer = b""
        self._reader: Optional[m.MessageReader] = None
        self._timer: Optional[Deadline] = None
        self._connector: Any = None
        self._in_pool = False
        self._auth_ok_sent = False
        self._tls_answered = False
        self._gss_answered = False
        #: The client talks TLS to the pooler (hostssl lines match it).
        self.ssl = False
        self._tls_retried = False
        self._login: Optional[clientauth.Login] = None
        self._backend_auth: Optional[BackendAuth] = None

    @property
    def auth_ok_sent(self) -> bool:
        """The client was sent AuthenticationOk by the pooler's own password check."""
        return self._auth_ok_sent

    def tls_answered(self) -> None:
        """Its SSLRequest was answered 'N' before this object took the connection."""
        self._tls_answered = True

    def gss_answered(self) -> None:
        """Its GSSENCRequest was answered 'N' before this object took the connection."""
        self._gss_answered = True

    @property
    def peer(self) -> str:
        """``host:port`` or ``local`` for logs and events.

        Formatted when asked, not per connection: most connections never log.
        """
        address = self._address
        if address is None and self.transport is not None:
            address = self.transport.getPeer()
        return "?" if address is None else _describe(address)

    # -- before the relay --------------------------------------------------------

    def _slow_data(self, data: bytes) -> None:
        state = self.state
        if state == STARTUP:
            self._startup_data(data)
        elif state == CONNECTING:
            self._login_data(data)
        elif state == AUTHENTICATING:
            self._password_data(data)
        elif state != CLOSED:
            # WAITING or SETTING: kept for the server once the session is attached.
            self._buffer += data
            if len(self._buffer) > MAX_EARLY_BYTES:
                self._fatal("08P01", "unexpected data before the session started")

    def _startup_data(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            try:
                packet, used = read_startup_packet(buffer)
            except ProtocolViolation as e:
                self._fatal(e.sqlstate, e.message)
                return
            if packet is None:
                self._buffer = buffer
                return
            whole, buffer = buffer, buffer[used:]
            if isinstance(packet, SSLRequest) and not self._tls_answered:
                self._tls_answered = True
                context = self.factory.tls.frontend
                if context is None:
                    self.send(b"N")
                    continue
                if buffer:
                    # PostgreSQL's CVE-2021-23214: bytes sent before the handshake
                    # must never be taken for encrypted ones.
                    self._fatal("08P01", "received unencrypted data after SSL request")
                    return
                self.send(b"S")
                self.transport.startTLS(context)
                self.send = self.transport.write  # through TLS from now on
                self.ssl = True
                self._buffer = b""
                return
            elif isinstance(packet, GSSENCRequest) and not self._gss_answered:
                self._gss_answered = True
                self.send(b"N")
            elif isinstance(packet, CancelRequest):
                self._cancel(packet)
                return
            elif isinstance(packet, StartupMessage):
                if self.factory.warm is not None:
                    self.startup_raw = bytes(whole[:used])
                self._buffer = buffer
                self._started(packet)
                return
            else:
                self._fatal("08P01", "duplicate SSL or GSS encryption request")
                return

    def _started(self, startup: StartupMessage) -> None:
        self.startup = startup
        if self.factory.config.log_connections:
            log.info(
                "client={client} connected: user={user} database={database}",
                client=self.peer,
                user=startup.user,
                database=startup.database,
            )
        negotiation = startup.negotiation()
        if negotiation is not None:
            self.send(negotiation)
        config = self.factory.config
        if config.enable_pool_hba:
            address = getattr(self.transport.getPeer(), "host", None)
            login = clientauth.begin(
                self.factory.auth_files,
                config.allow_clear_text_frontend_auth,
                startup.user,
                startup.database,
                address,
                self.ssl,
                self._peer_common_name(),
            )
            if isinstance(login, bytes):
                self.send(login)
                self.transport.loseConnection()
                return
            self._login = login
            if login.exchange is not None:
                self.state = AUTHENTICATING
                self._reader = m.MessageReader()
                self.send(login.exchange.start())
                if self._buffer:
                    data, self._buffer = self._buffer, b""
                    self._password_data(data)
                return
        self._admit()

    def _password_data(self, data: bytes) -> None:
        """The client's answers to the pooler's own password request."""
        login, reader = self._login, self._reader
        assert login is not None and login.exchange is not None and reader is not None
        for kind, body in self._framed(data):
            if kind == m.TERMINATE:
                self.transport.loseConnection()
                return
            if kind != m.PASSWORD_MESSAGE:
                self._fatal("08P01", f"expected a password response, got {chr(kind)!r}")
                return
            reply, result = login.exchange.receive(body)
            if reply:
                self.send(reply)
            if result is None:
                continue
            if not result.ok:
                log.info(
                    "client={client} user={user} authentication failed",
                    client=self.peer,
                    user=login.user,
                )
                self.send(result.error_response())
                self.transport.loseConnection()
                return
            login.verified = True
            login.client_key = result.client_key
            login.exchange = None
            self._auth_ok_sent = True
            self.send(m.authentication_ok())
            self._buffer = reader.take_rest()
            self._reader = None
            self._admit()
            return

    def _peer_common_name(self) -> Optional[str]:
        """The CN of the client's verified certificate, if it sent one over TLS."""
        if not self.ssl:
            return None
        certificate = self.transport.getPeerCertificate()
        if certificate is None:
            return None
        name = certificate.get_subject().CN
        return str(name) if name is not None else None

    def _admit(self) -> None:
        assert self.startup is not None
        self._in_pool = True
        self.key = self.startup.pool_key()
        if self.factory.pool.admit(self, self.key):
            self.admitted()
            return
        # Like a client in pgpool-II's listen queue: nothing happens until a slot
        # frees.  Reading goes on (so a client that gives up is noticed), but a
        # waiting client has nothing to say: more than a little is refused.
        self.state = WAITING
        self._stop_timer()

    def admitted(self) -> None:
        """A client slot is ours: reuse a pooled server connection or open one."""
        if self.state == CLOSED:
            return
        if self.state == WAITING:
            self._start_timer()
        # Until a server is attached, client bytes are kept, never parsed as startup.
        self.state = WAITING
        assert self.startup is not None
        verified = self._login is not None and self._login.verified
        self.factory.pool.acquire(self.key, self._acquired, verified)

    def _acquired(self, server: Optional[BackendProtocol]) -> None:
        if self.state == CLOSED:
            if server is not None:
                self.factory.pool.give_back(server, True)
        elif server is not None:
            self._reuse(server)
        else:
            self._connect()

    def _connect(self, tls_override: Optional[Any] = None) -> None:
        node = self.factory.config.primary_backend
        if node is None:
            self._fatal("08006", "no backend node is configured (backend_hostname0)")
            return
        assert self.startup is not None
        self.state = CONNECTING
        self._reader = m.MessageReader()
        if self._login is not None:
            self._backend_auth = self._login.backend_auth()
        tls = self.factory.tls
        self._connector = connect_server(
            self.factory.reactor,
            node,
            self.startup,
            self,
            self.factory.servers,
            tls_override if tls_override is not None else tls.for_server(node),
            tls.server_tls_required,
        )
        if self._buffer:
            data, self._buffer = self._buffer, b""
            self._login_data(data)

    def _framed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Whole client messages of a login phase; a framing error ends the connection."""
        assert self._reader is not None
        try:
            return self._reader.feed(data)
        except ProtocolViolation as e:
            self._fatal(e.sqlstate, e.message)
            return []

    def _login_data(self, data: bytes) -> None:
        """Client messages while a new server authenticates it: passwords go through."""
        for kind, body in self._framed(data):
            if kind == m.PASSWORD_MESSAGE and self.server is not None:
                self.server.send(m.message(b"p", body))
            elif kind == m.TERMINATE:
                self.transport.loseConnection()
                return
            else:
                self._fatal("08P01", f"unexpected message {chr(kind)!r} during authentication")
                return

    def _reuse(self, server: BackendProtocol) -> None:
        """pgpool-II's connect_using_existing_connection, with the name quoted."""
        assert self.startup is not None
        self.server = server
        server.owner = self
        server.keeper = None
        wanted = self.startup.application_name
        if server.params.get("application_name", "") == wanted:
            self._attach(server)
            return
        self.state = SETTING
        server.run([f"SET application_name TO {quote_literal(wanted)}"], self._name_set)

    def _name_set(self, server: BackendProtocol, ok: bool) -> None:
        if self.state == CLOSED:
            self.server = None
            self.factory.pool.give_back(server, ok)
        elif ok:
            self._attach(server)
        else:
            self.server = None
            server.owner = None  # its loss, if that was the failure, is not ours now
            self.factory.pool.give_back(server, False)
            self._connect()

    # -- what a server connection tells its owner --------------------------------

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        """A server's login message: answered from pool_passwd, or relayed to the client."""
        self.server = server
        if self.state != CONNECTING:
            return
        if raw[0] != m.AUTHENTICATION:
            self.send(raw)  # a notice
        elif self._backend_auth is not None:
            try:
                reply = self._backend_auth.receive(m.auth_code(raw[5:]), raw[5:])
            except BackendAuthError as e:
                self._server_refused(server, str(e))
                return
            if reply:
                server.send(reply)
        elif self._auth_ok_sent:
            # The pooler authenticated the client; there is nobody to relay to.
            self._server_refused(
                server, f'pool_passwd has no entry for user "{server.startup.user}"'
            )
        else:
            self.send(m.without_channel_binding(raw))

    def _server_refused(self, server: BackendProtocol, why: str) -> None:
        log.warn("client={client} server login failed: {why}", client=self.peer, why=why)
        server.transport.abortConnection()
        self._fatal("28000", f"the pooler cannot log in to the server: {why}")

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        self.server = server
        if not self._auth_ok_sent:
            self._auth_ok_sent = True
            self.send(raw)

    def server_ready(self, server: BackendProtocol) -> None:
        self.factory.events.backend_status(server.node.address, "up")
        if self.state == CONNECTING:
            self._connector = None
            self._attach(server)
        else:
            # The client left while this login finished: the pool decides its fate.
            self.factory.pool.give_back(server, True)

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """The server went away during the login (the session's own case is frontend's)."""
        if self.state in (CONNECTING, SETTING):
            self.server = None
            self._fatal("08006", f"server closed the connection during login: {why}")

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        """The server refused the login; the client gets the server's own words.

        With server_tls_sslmode = allow, a plaintext login refused before any
        authentication request (a hostssl-only server) is tried once more over TLS.
        """
        self.server = None
        self._connector = None
        if self.state == CONNECTING and not server.spoke and not server.encrypted:
            retry = None if self._tls_retried else self.factory.tls.for_allow_retry(server.node)
            if retry is not None:
                self._tls_retried = True
                self._connect(retry)
                return
        if self.state != CLOSED:
            self.send(raw)
            self.transport.loseConnection()

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self._connector = None
        self.factory.events.backend_status(node.address, "unreachable")
        log.warn(
            "client={client} server={server} unreachable: {why}",
            client=self.peer,
            server=node.address,
            why=why,
        )
        self._fatal("08006", f'could not connect to server at "{node.address}": {why}')

    # -- helpers -----------------------------------------------------------------

    def _cancel(self, request: CancelRequest) -> None:
        session = self.factory.cancels.lookup(request.pid, request.key)
        server = session.server if session is not None else None
        warm = self.factory.warm
        if server is None and warm is not None:
            server = warm.find(request.pid, request.key)
        if server is None:
            log.info("client={client} cancel request with an unknown key ignored", client=self.peer)
        else:
            send_cancel(self.factory.reactor, server.node, server.pid, server.secret)
        accepted.close(self.transport)

    def _fatal(self, sqlstate: str, text: str) -> None:
        self.send(m.error_response(sqlstate, text))
        self.transport.loseConnection()

    def _start_timer(self) -> None:
        timeout = self.factory.config.authentication_timeout
        if timeout > 0:
            self._timer = self.factory.login_deadlines(timeout).start(self._timed_out)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        log.info("client={client} authentication_timeout: closing", client=self.peer)
        self.transport.loseConnection()

    def _attach(self, server: BackendProtocol) -> None:
        """Start the session on ``server``: the subclass's (frontend.FrontendProtocol)."""
        raise NotImplementedError


def discard(data: bytes) -> None:
    """The writer of a side that has nowhere to send yet (client bytes before a server)."""


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"
    return "local"
