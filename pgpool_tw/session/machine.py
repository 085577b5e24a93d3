"""One client's session as a state machine: bytes and events in, bytes and actions out.

The rules of a client's life, as pgpool-II's ``do_child`` applies them to one
client, with no socket in sight:

* ``STARTUP``: read the startup packet within authentication_timeout; answer
  SSLRequest (S and TLS, or N) and GSSENCRequest (N) once each; a CancelRequest
  goes to ``cancel.py`` and ends the connection.
* ``AUTHENTICATING``: with enable_pool_hba, the pooler's own password exchange
  (``login.PasswordCheck``).
* ``WAITING``: a client slot is asked of the pool (``num_init_children``); while
  it waits, and until a server is attached, client bytes are kept, never parsed.
* ``SETTING`` / ``CONNECTING``: a pooled server (``SET application_name`` when
  it differs) or a new login on the primary node, whose authentication exchange
  is relayed or answered from pool_passwd (``login.ServerLogin``).
* ``RELAY``: the login's end is sent as a direct connection would send it, and
  bytes flow through the session tracker (or the C loop) until Terminate, end
  of file or a lost server; the server goes back to the pool in a state the
  next client may use.
* ``CLOSED``: nothing more happens.

``_move`` is the only place the state changes.  Everything the machine does to
the outside goes through ``ClientIO`` (the Twisted glue in ``frontend.py``
implements it; tests implement it with a list) and ``SessionContext`` (what
all sessions share).  It must never touch a transport, a reactor call other
than the context's, or another session's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol

from twisted.logger import Logger

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.login_end import login_end
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.sql import quote_literal
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session import cancel
from pgpool_tw.session.handshake import Handshake
from pgpool_tw.session.login import PasswordCheck, ServerLogin
from pgpool_tw.stats.events import SessionInfo

if TYPE_CHECKING:
    from pgpool_tw.config.settings import BackendNode
    from pgpool_tw.net.deadlines import Deadline
    from pgpool_tw.pool.backend import BackendProtocol
    from pgpool_tw.session.context import SessionContext

log = Logger()

#: What a client may send before its session is attached (it should send nothing).
MAX_EARLY_BYTES = 65536

# States.
STARTUP = 0
WAITING = 1  # startup read; waiting for a client slot or a server
CONNECTING = 2  # a new server connection logs in; its auth exchange is relayed
SETTING = 3  # a pooled server connection runs SET application_name
RELAY = 4
CLOSED = 5
AUTHENTICATING = 6  # the pooler checks the client's password against pool_passwd

#: The states' names in logs and the stats snapshot (PgBouncer's "active" for RELAY).
STATE_NAMES = {
    STARTUP: "startup",
    WAITING: "waiting",
    CONNECTING: "connecting",
    SETTING: "setting",
    RELAY: "active",
    CLOSED: "closed",
    AUTHENTICATING: "authenticating",
}


class ClientIO(Protocol):
    """What a session asks of its client connection (the glue's side of the contract)."""

    @property
    def peer(self) -> str: ...
    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def finish(self) -> None: ...
    def start_tls(self, context: Any) -> None: ...
    def peer_host(self) -> Optional[str]: ...
    def peer_common_name(self) -> Optional[str]: ...
    def start_relay(self, server: BackendProtocol, tracker: SessionTracker) -> None: ...
    def stop_relay(self, server: BackendProtocol) -> None: ...
    def replay(self, data: bytes) -> None: ...


class Session:
    """One client from its first byte to its close; the glue feeds it, it decides."""

    __slots__ = (
        "__weakref__",
        "_auth_ok_sent",
        "_buffer",
        "_connector",
        "_handshake",
        "_in_pool",
        "_info",
        "_password",
        "_secret",
        "_server_login",
        "_timer",
        "_tls_retried",
        "context",
        "io",
        "key",
        "server",
        "ssl",
        "startup",
        "startup_raw",
        "state",
        "tracker",
    )

    def __init__(self, context: SessionContext, io: ClientIO) -> None:
        self.context = context
        self.io = io
        self.state = STARTUP
        self.server: Optional[BackendProtocol] = None
        self.tracker: Optional[SessionTracker] = None
        self.startup: Optional[StartupMessage] = None
        #: The startup packet as received (a warm lane learns it; see engine/warm.py).
        self.startup_raw: Optional[bytes] = None
        self.key: Any = None  # the pool key, once the startup packet is read
        #: The client talks TLS to the pooler (hostssl lines match it).
        self.ssl = False
        self._buffer = b""
        self._timer: Optional[Deadline] = None
        self._connector: Any = None
        self._in_pool = False
        self._handshake = Handshake(self)
        self._tls_retried = False
        self._auth_ok_sent = False
        self._password: Optional[PasswordCheck] = None
        self._server_login: Optional[ServerLogin] = None
        self._secret = 0
        self._info: Any = None

    # -- the one function that moves the state ------------------------------------

    def _move(self, state: int) -> None:
        """Enter ``state``; a session that relays or ends has no login timer left."""
        self.state = state
        if state in (RELAY, CLOSED):
            self._stop_timer()

    @property
    def peer(self) -> str:
        """``host:port`` or ``local``, for logs and events."""
        return self.io.peer

    @property
    def auth_ok_sent(self) -> bool:
        """The client has been sent AuthenticationOk (by the pooler or a relayed login)."""
        return self._auth_ok_sent

    @property
    def verified(self) -> bool:
        """The pooler itself let this client in (hba trust or a password it checked)."""
        return self._password is not None and self._password.login.verified

    # -- inputs: the client ---------------------------------------------------------

    def connected(self) -> None:
        self._start_timer()

    def tls_answered(self) -> None:
        """Its SSLRequest was answered 'N' before this session took the connection."""
        self._handshake.tls_answered = True

    def gss_answered(self) -> None:
        """Its GSSENCRequest was answered 'N' before this session took the connection."""
        self._handshake.gss_answered = True

    def client_data(self, data: bytes) -> None:
        """Client bytes outside the relay (the glue forwards relayed bytes itself)."""
        state = self.state
        if state == STARTUP:
            self._handshake.feed(data)
        elif state == CONNECTING and self._server_login is not None:
            self._server_login.client_data(data)
        elif state == AUTHENTICATING and self._password is not None:
            self._password.client_data(data)
        elif state != CLOSED:
            # WAITING or SETTING: kept for the server once the session is attached.
            self._buffer += data
            if len(self._buffer) > MAX_EARLY_BYTES:
                self.fatal("08P01", "unexpected data before the session started")

    def client_terminated(self) -> None:
        """A clean Terminate: the server is reset and pooled if the session was in sync."""
        tracker = self.tracker
        assert tracker is not None
        self._release_server(tracker.in_sync)
        self._move(CLOSED)
        self._leave_pool()
        self.io.finish()

    def client_lost(self) -> None:
        """The client's connection closed (for whatever reason)."""
        state = self.state
        self._move(CLOSED)
        if state == RELAY and self.server is not None:
            tracker = self.tracker
            assert tracker is not None
            self._release_server(tracker.in_sync and tracker.status == m.IDLE)
        elif state == CONNECTING and self._connector is not None:
            self._connector.disconnect()
        self._leave_pool()

    def started(self, startup: StartupMessage, raw: bytes, rest: bytes) -> None:
        """The startup packet (``raw``) arrived; ``rest`` is what followed it."""
        if self.context.warm is not None:
            self.startup_raw = raw
        self._buffer = rest
        self.startup = startup
        config = self.context.config
        if config.log_connections:
            log.info(
                "client={client} connected: user={user} database={database}",
                client=self.peer,
                user=startup.user,
                database=startup.database,
            )
        negotiation = startup.negotiation()
        if negotiation is not None:
            self.io.send(negotiation)
        if config.enable_pool_hba:
            check = PasswordCheck.begin(
                self, startup, self.io.peer_host(), self.io.peer_common_name()
            )
            if check is None:
                return  # refused: the check sent the error and closed
            self._password = check
            if check.exchanging:
                self._move(AUTHENTICATING)
                data, self._buffer = self._buffer, b""
                check.start(data)
                return
        self.admit()

    def password_accepted(self, rest: bytes) -> None:
        """The pooler's own password check passed; ``rest`` followed the last answer."""
        self._auth_ok_sent = True
        self.io.send(m.authentication_ok())
        self._buffer = rest
        self.admit()

    # -- inputs: the pool -----------------------------------------------------------

    def admit(self) -> None:
        """Ask for a client slot (the password check calls this once it succeeds)."""
        assert self.startup is not None
        self._in_pool = True
        self.key = self.startup.pool_key()
        if self.context.pool.admit(self, self.key):
            self.admitted()
            return
        # Like a client in pgpool-II's listen queue: nothing happens until a slot
        # frees.  Reading goes on (so a client that gives up is noticed), but a
        # waiting client has nothing to say: more than a little is refused.
        self._move(WAITING)
        self._stop_timer()

    def admitted(self) -> None:
        """A client slot is ours: reuse a pooled server connection or open one."""
        if self.state == CLOSED:
            return
        if self.state == WAITING:
            self._start_timer()  # it waited for the slot; the login's time starts again
        # Until a server is attached, client bytes are kept, never parsed as startup.
        self._move(WAITING)
        self.context.pool.acquire(self.key, self._acquired, self.verified)

    def _acquired(self, server: Optional[BackendProtocol]) -> None:
        if self.state == CLOSED:
            if server is not None:
                self.context.pool.give_back(server, True)
        elif server is not None:
            self._reuse(server)
        else:
            self.connect()

    def connect(self, tls_override: Optional[Any] = None) -> None:
        """Log in on a new server connection to the primary node."""
        node = self.context.config.primary_backend
        if node is None:
            self.fatal("08006", "no backend node is configured (backend_hostname0)")
            return
        assert self.startup is not None
        self._move(CONNECTING)
        login = self._server_login = ServerLogin(self, self._password)
        self._connector = self.context.connect(node, self.startup, self, tls_override)
        data, self._buffer = self._buffer, b""
        if data:
            login.client_data(data)

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
        self._move(SETTING)
        server.run([f"SET application_name TO {quote_literal(wanted)}"], self._name_set)

    def _name_set(self, server: BackendProtocol, ok: bool) -> None:
        if self.state == CLOSED:
            self.server = None
            self.context.pool.give_back(server, ok)
        elif ok:
            self._attach(server)
        else:
            self.server = None
            server.owner = None  # its loss, if that was the failure, is not ours now
            self.context.pool.give_back(server, False)
            self.connect()

    # -- inputs: the server connection (backend.ServerOwner) -----------------------

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        """A server's login message: answered from pool_passwd, or relayed to the client."""
        self.server = server
        if self.state == CONNECTING and self._server_login is not None:
            self._server_login.server_message(server, raw)

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        self.server = server
        if not self._auth_ok_sent:
            self._auth_ok_sent = True
            self.io.send(raw)

    def server_ready(self, server: BackendProtocol) -> None:
        self.context.events.backend_status(server.node.address, "up")
        if self.state == CONNECTING:
            self._connector = None
            self._attach(server)
        else:
            # The client left while this login finished: the pool decides its fate.
            self.context.pool.give_back(server, True)

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        """The server refused the login; the client gets the server's own words.

        With server_tls_sslmode = allow, a plaintext login refused before any
        authentication request (a hostssl-only server) is tried once more over TLS.
        """
        self.server = None
        self._connector = None
        if self.state == CONNECTING and not server.spoke and not server.encrypted:
            retry = None if self._tls_retried else self.context.tls.for_allow_retry(server.node)
            if retry is not None:
                self._tls_retried = True
                self.connect(retry)
                return
        if self.state != CLOSED:
            self.io.send(raw)
            self.io.close()

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """The server went away under this session: tell the client and close."""
        if self.state == RELAY and self.server is not None:
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
                self.io.send(m.error_response("08006", "server closed the connection unexpectedly"))
            self.io.close()
        elif self.state in (CONNECTING, SETTING):
            self.server = None
            self.fatal("08006", f"server closed the connection during login: {why}")

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self._connector = None
        self.context.events.backend_status(node.address, "unreachable")
        log.warn(
            "client={client} server={server} unreachable: {why}",
            client=self.peer,
            server=node.address,
            why=why,
        )
        self.fatal("08006", f'could not connect to server at "{node.address}": {why}')

    def server_refused(self, server: BackendProtocol, why: str) -> None:
        """The pooler cannot answer the server's password request for this client."""
        log.warn("client={client} server login failed: {why}", client=self.peer, why=why)
        server.transport.abortConnection()
        self.fatal("28000", f"the pooler cannot log in to the server: {why}")

    # -- the session ------------------------------------------------------------------

    def _attach(self, server: BackendProtocol) -> None:
        """Send the login's end (as a direct connection would) and start relaying."""
        self.server = server
        self._secret = cancel.new_secret()
        end, _ = login_end(
            server.parameter_statuses(),
            server.pid,
            self._secret,
            server.status,
            not self._auth_ok_sent,
        )
        self.io.send(end)
        self._start_session(server)
        warm = self.context.warm
        if warm is not None:
            warm.learn(self.io, server)
        data, self._buffer = self._buffer, b""
        if data:
            self.io.replay(data)

    def resume(
        self, server: BackendProtocol, tracker: SessionTracker, secret: int, owed: bytes
    ) -> None:
        """Carry on a session the warm lane started (see engine/warm.py), owing ``owed``."""
        self.startup = server.startup
        self.key = server.pool_key
        self._in_pool = True
        self.context.pool.enter(self, self.key)
        self.server = server
        self._secret = secret
        if owed:
            self.io.send(owed)
        self._start_session(server, tracker)

    def _start_session(
        self, server: BackendProtocol, tracker: Optional[SessionTracker] = None
    ) -> None:
        context = self.context
        context.cancels.register(server.pid, self._secret, self)
        self.tracker = server.attach(self, self.io.send, tracker)
        self._move(RELAY)
        self.io.start_relay(server, self.tracker)
        if context.events.observers:
            startup = self.startup
            assert startup is not None
            self._info = SessionInfo(
                self.peer, startup.user, startup.database, startup.application_name, server.pid
            )
            context.events.fire("client_session_started", self._info)

    def _stop_relay(self, server: BackendProtocol) -> None:
        self.io.stop_relay(server)
        self.server = None
        self.context.cancels.unregister(server.pid, self)
        info, self._info = self._info, None
        if info is not None:
            self.context.events.fire("client_session_ended", info)

    def _release_server(self, reusable: bool) -> None:
        server = self.server
        assert server is not None
        self._stop_relay(server)
        self.context.pool.give_back(server, reusable)

    def _leave_pool(self) -> None:
        if self._in_pool:
            self._in_pool = False
            self.context.pool.withdraw(self)

    # -- inputs: the service ----------------------------------------------------------

    def shut_down(self) -> None:
        """Fast shutdown: FATAL 57P01 where the stream allows it, then close."""
        tracker = self.tracker
        relaying = self.state == RELAY and self.server is not None
        if relaying and tracker is not None and not tracker.server_at_boundary:
            self.io.close()  # mid-message: an error would corrupt it
            return
        self.fatal("57P01", "terminating connection due to administrator command")

    def refuse_waiting(self) -> None:
        """Smart shutdown: a client still waiting for a slot will not get one."""
        if self.state == WAITING:
            self.fatal("57P03", "the database system is shutting down")

    def idle_limit_reached(self, limit: float) -> None:
        """client_idle_limit: the glue saw no client bytes for ``limit`` seconds."""
        log.info("client={client} idle for {limit}s: disconnecting", client=self.peer, limit=limit)
        self.fatal(
            "57P05", f"terminating connection because client_idle_limit ({limit:g}s) was reached"
        )

    # -- helpers ----------------------------------------------------------------------

    def fatal(self, sqlstate: str, text: str) -> None:
        self.io.send(m.error_response(sqlstate, text))
        self.io.close()

    def _start_timer(self) -> None:
        timeout = self.context.config.authentication_timeout
        if timeout > 0:
            self._timer = self.context.login_deadlines(timeout).start(self._timed_out)

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _timed_out(self) -> None:
        self._timer = None
        log.info("client={client} authentication_timeout: closing", client=self.peer)
        self.io.close()
