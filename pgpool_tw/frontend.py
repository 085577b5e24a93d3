"""One client connection: startup, admission, login, attach, relay, detach.

The client session moves through ``STARTUP → WAITING → CONNECTING | SETTING →
RELAY → CLOSED`` and only methods of ``FrontendProtocol`` move it.  It follows
pgpool-II's ``do_child`` loop for one client: read the startup packet within
authentication_timeout, answer SSLRequest/GSSENCRequest, serve CancelRequest,
then reuse a pooled server connection (``connect_using_existing_connection``)
or log in on a new one, relaying the server's authentication exchange.

It must never hand a client a server connection that asked for a password at
login: until the pooler authenticates clients itself, such connections serve
only the client that logged them in (the pool enforces it, see ``pool.py``).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgpool_tw import accepted, clientauth, fastpoll
from pgpool_tw.authfiles import AuthFiles
from pgpool_tw.backend import BackendProtocol, ServerBook, connect_server, send_cancel
from pgpool_tw.cancel import CancelRegistry, new_secret
from pgpool_tw.config import BackendNode, Config
from pgpool_tw.deadlines import Deadline, Deadlines
from pgpool_tw.events import EventHub, SessionInfo
from pgpool_tw.pool import Pool
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.auth import BackendAuth, BackendAuthError
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.sql import quote_literal
from pgpool_tw.protocol.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
)
from pgpool_tw.tls import TLSContexts
from pgpool_tw.transport import PeerProducer, Writer, link, make_writer, tune_socket, unlink

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


class FrontendFactory(Factory):
    """Everything client sessions share: settings, the pool and the cancel keys."""

    noisy = False

    def __init__(
        self, config: Config, pool: Pool, reactor: Any, events: Optional[EventHub] = None
    ) -> None:
        self.config = config
        self.pool = pool
        self.reactor = reactor
        self.events = events if events is not None else EventHub()
        #: pool_hba.conf and pool_passwd (empty while enable_pool_hba is off).
        self.auth_files = AuthFiles()
        #: TLS contexts for both sides (a reload swaps in new ones).
        self.tls = TLSContexts()
        self.cancels: CancelRegistry[FrontendProtocol] = CancelRegistry()
        #: Open connections on each side, so a shutdown can wait for all of them.
        self.clients: set[FrontendProtocol] = set()
        self.servers = ServerBook(self.events)
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

    def buildProtocol(self, addr: Any) -> FrontendProtocol:
        return FrontendProtocol(self, addr)


class FrontendProtocol(Protocol):
    """A client connection from its first byte to its close."""

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
        self.tracker: Optional[SessionTracker] = None
        self.server_write: Writer = _discard
        #: Sends now when nothing is queued (see transport.make_writer).
        self.send: Writer = _discard
        self.startup: Optional[StartupMessage] = None
        self.key: Any = None  # the pool key, once the startup packet is read
        #: Chunks received while relaying; client_idle_limit compares it across ticks.
        self.received = 0
        self._idle_mark = -1
        self._idle_since = 0.0
        self._buffer = b""
        self._reader: Optional[m.MessageReader] = None
        self._timer: Optional[Deadline] = None
        self._connector: Any = None
        self._producers: Optional[tuple[PeerProducer, PeerProducer]] = None
        #: The C loop's handle while it forwards this session (fastpoll.start_relay).
        self._relay: Any = None
        self._secret = 0
        self._in_pool = False
        self._auth_ok_sent = False
        self._tls_answered = False
        self._gss_answered = False
        #: The client talks TLS to the pooler (hostssl lines match it).
        self.ssl = False
        self._session: Optional[SessionInfo] = None
        self._tls_retried = False
        self._login: Optional[clientauth.Login] = None
        self._backend_auth: Optional[BackendAuth] = None

    # -- Twisted -----------------------------------------------------------------

    def connectionMade(self) -> None:
        tune_socket(self.transport)
        self.send = make_writer(self.transport)
        self.factory.clients.add(self)
        self._start_timer()

    @property
    def peer(self) -> str:
        """``host:port`` or ``local`` for logs and events.

        Formatted when asked, not per connection: most connections never log.
        """
        address = self._address
        if address is None and self.transport is not None:
            address = self.transport.getPeer()
        return "?" if address is None else _describe(address)

    def dataReceived(self, data: bytes) -> None:
        if self.relaying:
            self.received += 1
            at = self.tracker.feed_client(data)  # type: ignore[union-attr]
            if at < 0:
                self.server_write(data)
                return
            if at:
                self.server_write(data[:at])
            self._terminated()
            return
        self._slow_data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        state, self.state = self.state, CLOSED
        self.factory.clients.discard(self)
        self._stop_timer()
        if self.relaying:
            tracker = self.tracker
            assert tracker is not None
            self._release_server(tracker.in_sync and tracker.status == m.IDLE)
        elif state == CONNECTING and self._connector is not None:
            self._connector.disconnect()
        self._leave_pool()

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
            buffer = buffer[used:]
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
            self.send(without_channel_binding(raw))

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

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """The server went away under this session: tell the client and close."""
        if self.relaying:
            tracker = self.tracker
            assert tracker is not None
            self._stop_relay(server)
            log.warn(
                "client={client} server={server} lost mid-session: {why}",
                client=self.peer,
                server=server.node.address,
                why=why,
            )
            if tracker.server_at_boundary:
                self.send(m.error_response("08006", "server closed the connection unexpectedly"))
            self.transport.loseConnection()
        elif self.state in (CONNECTING, SETTING):
            self.server = None
            self._fatal("08006", f"server closed the connection during login: {why}")

    # -- the session -------------------------------------------------------------

    def _attach(self, server: BackendProtocol) -> None:
        """Send the login's end (as a direct connection would) and start relaying."""
        self._stop_timer()
        self.server = server
        self._secret = new_secret()
        self.factory.cancels.register(server.pid, self._secret, self)
        out = [] if self._auth_ok_sent else [m.authentication_ok()]
        out.append(server.parameter_statuses())
        out.append(m.backend_key_data(server.pid, self._secret))
        out.append(m.ready_for_query(server.status))
        self.send(b"".join(out))
        self.tracker = server.attach(self, self.send)
        self.server_write = server.send
        self._producers = link(self.transport, server.transport)
        self._relay = fastpoll.start_relay(
            self.factory.reactor, self.tracker, self.transport, server.transport, self._terminated
        )
        self._reader = None
        self.state = RELAY
        self.relaying = True
        self._idle_since = self.factory.reactor.seconds()
        if self.factory.events.observers:
            startup = self.startup
            assert startup is not None
            self._session = SessionInfo(
                self.peer, startup.user, startup.database, startup.application_name, server.pid
            )
            self.factory.events.fire("client_session_started", self._session)
        if self._buffer:
            data, self._buffer = self._buffer, b""
            self.dataReceived(data)

    def _terminated(self) -> None:
        """A clean Terminate: the server is reset and pooled if the session was in sync."""
        tracker = self.tracker
        assert tracker is not None
        self._release_server(tracker.in_sync)
        self.state = CLOSED
        self._leave_pool()
        accepted.close(self.transport)  # runs connectionLost now when nothing is queued

    def _stop_relay(self, server: BackendProtocol) -> None:
        self.relaying = False
        if self._relay is not None:
            fastpoll.stop_relay(self._relay)
            self.received += self._relay.received
            self._relay = None
        self.server = None
        self.server_write = _discard
        if self._producers is not None:
            unlink(self.transport, server.transport, self._producers)
            self._producers = None
        self.factory.cancels.unregister(server.pid, self)
        session, self._session = self._session, None
        if session is not None:
            self.factory.events.fire("client_session_ended", session)

    def _release_server(self, reusable: bool) -> None:
        server = self.server
        assert server is not None
        self._stop_relay(server)
        self.factory.pool.give_back(server, reusable)

    def _leave_pool(self) -> None:
        if self._in_pool:
            self._in_pool = False
            self.factory.pool.withdraw(self)

    def shut_down(self) -> None:
        """Fast shutdown: FATAL 57P01 where the stream allows it, then close."""
        tracker = self.tracker
        if self.relaying and tracker is not None and not tracker.server_at_boundary:
            self.transport.loseConnection()  # mid-message: an error would corrupt it
            return
        self._fatal("57P01", "terminating connection due to administrator command")

    def refuse_waiting(self) -> None:
        """Smart shutdown: a client still waiting for a slot will not get one."""
        if self.state == WAITING:
            self._fatal("57P03", "the database system is shutting down")

    def idle_tick(self, now: float, limit: float) -> None:
        """client_idle_limit: close a client idle that long between queries."""
        tracker = self.tracker
        if not self.relaying or tracker is None:
            return
        received = self.received + (self._relay.received if self._relay is not None else 0)
        if received != self._idle_mark or tracker.pending:
            self._idle_mark = received
            self._idle_since = now
        elif now - self._idle_since >= limit:
            log.info(
                "client={client} idle for {limit}s: disconnecting", client=self.peer, limit=limit
            )
            self._fatal(
                "57P05",
                f"terminating connection because client_idle_limit ({limit:g}s) was reached",
            )

    # -- helpers -----------------------------------------------------------------

    def _cancel(self, request: CancelRequest) -> None:
        session = self.factory.cancels.lookup(request.pid, request.key)
        server = session.server if session is not None else None
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


def without_channel_binding(raw: bytes) -> bytes:
    """An AuthenticationSASL request without SCRAM-SHA-256-PLUS.

    Channel binding ties SCRAM to one TLS connection; the client's TLS
    connection (if any) ends at the pooler, not at the server, so a relayed
    exchange can only work unbound.
    """
    if len(raw) < 9 or m.auth_code(raw[5:]) != m.AUTH_SASL:
        return raw
    names = [n for n in raw[9:].split(b"\0") if n and n != b"SCRAM-SHA-256-PLUS"]
    return m.message(b"R", raw[5:9] + b"".join(n + b"\0" for n in names) + b"\0")


def _discard(data: bytes) -> None:
    """Where client bytes go when no server is attached."""


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"
    return "local"
