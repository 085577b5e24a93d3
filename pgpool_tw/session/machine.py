"""One client's session as a state machine: bytes and events in, bytes and actions out.

The rules of a client's life, as pgpool-II's ``do_child`` applies them to one
client, with no socket in sight:

* ``STARTUP``: read the startup packet within authentication_timeout; answer
  SSLRequest (S and TLS, or N) and GSSENCRequest (N) once each; a CancelRequest
  goes to ``cancel.py`` and ends the connection (``handshake.Handshake``).
* ``AUTHENTICATING``: with enable_pool_hba, the pooler's own password exchange
  (``login.PasswordCheck``).
* ``WAITING``: a client slot is asked of the pool (``num_init_children``); while
  it waits, and until a server is attached, client bytes are kept, never parsed.
  Only an authenticated client asks: one the pooler did not check (no pool_hba)
  logs in on a new server first (``CONNECTING``, ``_prove``), holding no slot,
  and asks once PostgreSQL let it in (issue #20; ``preauth.py`` caps the rest).
* ``SETTING`` / ``CONNECTING``: a pooled server (``SET application_name`` when
  it differs) or a new login on the primary node, whose authentication exchange
  is relayed or answered from pool_passwd (``login.ServerLogin``).
* ``RELAY``: the login's end is sent as a direct connection would send it, and
  bytes flow through the session tracker (or the C loop) until Terminate, end
  of file or a lost server; the server goes back to the pool in a state the
  next client may use.
* ``CLOSED``: nothing more happens.

``_move`` is the only place the state changes.  Everything the machine does to
the outside goes through ``ClientIO`` (``io.py``; the Twisted glue in
``frontend.py`` implements it, tests implement it with lists) and ``SessionContext`` (what
all sessions share).  It must never touch a transport, a reactor call other
than the context's, or another session's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from pgpool_tw import __version__
from pgpool_tw.cluster.classify import ROUTE_STANDBY
from pgpool_tw.cluster.pgpool_sql import SHOW, LocalCommand, local_command
from pgpool_tw.cluster.router import readable
from pgpool_tw.config.pooling import TRANSACTION
from pgpool_tw.logs.escape import printable
from pgpool_tw.pool.key import PoolKey, pool_key
from pgpool_tw.pool.leases import settings_tag
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.login_end import login_end
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.sql import set_application_name
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session import cancel
from pgpool_tw.session.balance import BalanceLeg
from pgpool_tw.session.handshake import Handshake
from pgpool_tw.session.lease import Borrow, query_wait_text
from pgpool_tw.session.legs import Leg
from pgpool_tw.session.local import pgpool_command
from pgpool_tw.session.login import PasswordCheck, ServerLogin
from pgpool_tw.session.logs import LoggedTransactionStream, log_disconnection, statements_for
from pgpool_tw.session.routed import RoutedStream
from pgpool_tw.session.states import (
    AUTHENTICATING,
    CLOSED,
    CONNECTING,
    RELAY,
    SETTING,
    STARTUP,
    WAITING,
)
from pgpool_tw.session.transaction import TransactionStream
from pgpool_tw.stats.counters import Counters
from pgpool_tw.stats.events import SessionInfo

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import TxServer
    from pgpool_tw.net.deadlines import Deadline
    from pgpool_tw.pool.backend import BackendProtocol
    from pgpool_tw.pool.leases import Ticket
    from pgpool_tw.session.context import ConsoleClient, SessionContext
    from pgpool_tw.session.io import ClientIO

log = Logger()

#: The virtual databases of the admin console (PgBouncer's, and pgpool's own name): a
#: login to one never reaches PostgreSQL (admin/console.py answers it).
CONSOLE_DATABASES = ("pgbouncer", "pgpool")

#: What a drained client is told (FATAL 57P01 admin_shutdown) as its session ends.
DRAIN_TEXT = (
    "terminating connection because pgpool-tw is draining for a restart: "
    "reconnect to continue (another pooler takes new connections)"
)

#: What a client may send before its session is attached (it should send nothing).
MAX_EARLY_BYTES = 65536


class Session:
    """One client from its first byte to its close; the glue feeds it, it decides."""

    __slots__ = (
        "__weakref__",
        "_auth_ok_sent",
        "_balance",
        "_borrow",
        "_buffer",
        "_console",
        "_draining",
        "_handshake",
        "_in_pool",
        "_info",
        "_lb_node",
        "_login_server",
        "_password",
        "_placed",
        "_full_tries",
        "_preauth",
        "_probe",
        "_proving",
        "_since",
        "_secret",
        "_ticket",
        "_tx_lb",
        "_tx_pid",
        "_tx_wrote",
        "server_login",
        "_timer",
        "context",
        "counts",
        "io",
        "key",
        "lb_server",
        "overrides",
        "routed",
        "server",
        "ssl",
        "startup",
        "startup_raw",
        "state",
        "tracker",
        "tx",
    )

    def __init__(self, context: SessionContext, io: ClientIO) -> None:
        self.context = context
        self.io = io
        self.state = STARTUP
        self.server: Optional[BackendProtocol] = None
        self.tracker: Optional[SessionTracker] = None
        self.startup: Optional[StartupMessage] = None
        #: The startup packet as received (a warm lane learns it; see lane/warm.py).
        self.startup_raw: Optional[bytes] = None
        self.key: Optional[PoolKey] = None  # once the startup packet is read
        #: The client talks TLS to the pooler (hostssl lines match it).
        self.ssl = False
        self._buffer = b""
        self._timer: Optional[Deadline] = None
        self._in_pool = False
        self._handshake = Handshake(self)
        self._auth_ok_sent = False
        self._password: Optional[PasswordCheck] = None
        self.server_login: Optional[ServerLogin] = None
        self._secret = 0
        self._info: Optional[SessionInfo] = None
        #: Routing: the load-balancing node chosen at attach (None: the session does not
        #: route), the leg being opened, its server, and the stream over both legs.
        self._lb_node: Optional[int] = None
        #: Settings this session changed for itself (PGPOOL SET); None until one is.
        self.overrides: Optional[dict[str, Any]] = None
        self._balance: Optional[BalanceLeg] = None
        self.lb_server: Optional[BackendProtocol] = None
        self.routed: Optional[RoutedStream] = None
        #: Transaction pooling (pool_mode): the stream over the servers it borrows, the
        #: request for the next one, the login's turn in the leases' queue, whether the
        #: login holds a place for a new server, and the pid the client was told.
        self.tx: Optional[TransactionStream] = None
        #: The admin console this client logged in to (a virtual database), if any.
        self._console: Optional[ConsoleClient] = None
        #: The service drains: the session ends at its next transaction boundary.
        self._draining = False
        self._borrow: Optional[Borrow] = None
        self._ticket: Optional[Ticket] = None
        self._placed = False
        self._tx_pid = 0
        #: Transaction mode with routing: the load-balancing node (None: none), and the
        #: replication-check round counted when the session last wrote (-1: never).
        self._tx_lb: Optional[int] = None
        self._tx_wrote = -1
        #: log_disconnections (read when the client connects, as PostgreSQL does): when
        #: the connection came, and the session's own totals (its servers' harvests add
        #: to them: pool/backend.py ``session_counts``); None when not logged.
        self._since = 0.0
        self.counts: Optional[Counters] = None
        #: Not authenticated yet (session/preauth.py counts it against its cap).
        self._preauth = False
        #: A pass-through login (no pool_hba check) on a new server, before the server
        #: said AuthenticationOk: it holds no slot and no place in a pool.
        self._proving = False
        #: This login finds out whether its pool key needs a password (Pool.wait_for_probe).
        self._probe = False
        #: Times PostgreSQL was full for this pass-through login and a stalled one made room.
        self._full_tries = 0
        #: That login's server once it is up, until the session has its slot.
        self._login_server: Optional[BackendProtocol] = None

    # -- the one function that moves the state ------------------------------------

    def _move(self, state: int) -> None:
        """Enter ``state``; a session that relays or ends has no login timer left."""
        self.state = state
        if state in (RELAY, CLOSED):
            self._authenticated()
            if self._probe:
                self._probe = False
                assert self.key is not None
                self.context.pool.probe_ended(self.key)
        if state == CLOSED and self.overrides is not None:
            self.context.own_idle_limits.discard(self.io)

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

    def connected(self, since: Optional[float] = None) -> None:
        """The connection is up (accepted at ``since``, the reactor's clock, when that was
        earlier: the C loop read its startup packet): authentication_timeout counts from
        the accept, and until the client is authenticated it holds nothing but its socket."""
        context = self.context
        now = context.reactor.seconds()
        accepted = now if since is None else min(since, now)
        if context.config.log_disconnections:
            self._since = accepted
            self.counts = Counters()
        timeout = context.config.authentication_timeout
        if timeout > 0:
            deadlines = context.login_deadlines(timeout)
            if accepted == now:
                self._timer = deadlines.start(self._timed_out)
            else:
                self._timer = deadlines.start_at(accepted + timeout, self._timed_out)
        self._preauth = True
        context.preauth.enter(self, accepted)

    def _authenticated(self) -> None:
        """The client proved who it is (or left): the login's time limit and the
        pre-authentication cap no longer apply to it."""
        self._stop_timer()
        if self._preauth:
            self._preauth = False
            self.context.preauth.leave(self)

    def evict(self) -> None:
        """This pass-through login waited longest for its password while PostgreSQL had no
        connection left for another client (``PreAuth.evict_stalled``)."""
        self.fatal(
            "53300",
            "sorry, too many clients already: the server is full, and this login waited "
            "longest for its password",
        )

    def server_full(self) -> bool:
        """PostgreSQL refused this pass-through login for want of connections: a login
        stalled on its client's password makes room, and this one is tried again shortly
        (the closed login's backend needs a moment to exit) unless it was already let in
        (then the room is the next login's); False: the client gets PostgreSQL's refusal."""
        if not self._proving or self._full_tries >= 3:
            return False
        if not self.context.preauth.evict_stalled(self):
            return False
        if self._auth_ok_sent:
            # Refused after its AuthenticationOk (PostgreSQL's reserved connections are
            # checked then): no new login can be made for it, but the next one has room.
            return False
        self._full_tries += 1
        self.context.reactor.callLater(0.05, self._login_again)
        return True

    def _login_again(self) -> None:
        if self.state == CONNECTING and self._proving:
            self.connect()

    def shed(self, cap: int) -> None:
        """The oldest of too many clients still authenticating (max_preauth_clients)."""
        self._preauth = False
        self.context.preauth.note_shed(self.peer, cap)
        self.fatal(
            "53300",
            f"sorry, too many clients are logging in at once (max_preauth_clients = {cap}); "
            "the oldest are closed first",
        )

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
        elif state == CONNECTING and self.server_login is not None:
            self.server_login.client_data(data)
        elif state == AUTHENTICATING and self._password is not None:
            self._password.client_data(data)
        elif self._console is not None:
            if state == RELAY:
                self._console.feed(data)
        elif state != CLOSED:
            # WAITING or SETTING: kept for the server once the session is attached.
            self.keep(data)

    def keep(self, data: bytes) -> None:
        """Client bytes for the server once the session is attached (bounded)."""
        self._buffer += data
        if len(self._buffer) > MAX_EARLY_BYTES:
            self.fatal("08P01", "unexpected data before the session started")

    def client_terminated(self) -> None:
        """A clean Terminate: the server is reset and pooled if the session was in sync."""
        tracker = self.tracker
        assert tracker is not None
        if self.tx is not None:
            self._end_tx()
        else:
            self._release_server(tracker.in_sync)
        self._move(CLOSED)
        self._leave_pool()
        self.io.finish()

    def client_lost(self) -> None:
        """The client's connection closed (for whatever reason)."""
        state = self.state
        self._move(CLOSED)
        if self.tx is not None:
            self._end_tx()
        elif state == RELAY and self.server is not None:
            tracker = self.tracker
            assert tracker is not None
            self._release_server(tracker.in_sync and tracker.status == m.IDLE)
        elif state == CONNECTING and self.server_login is not None:
            self.server_login.abandon()
        elif state == SETTING and self._balance is not None:
            self._balance.abandon()
            self._give_back_primary()
        if self._ticket is not None:
            ticket, self._ticket = self._ticket, None
            self.context.pool.leases.withdraw(ticket)
        if self._placed:
            self._placed = False
            self.context.pool.leases.open_failed(self.key)
        if self._login_server is not None:
            server, self._login_server = self._login_server, None
            self._give_back(server, True)
        self._leave_pool()
        if self.counts is not None and self.startup is not None:
            seconds = self.context.reactor.seconds() - self._since
            log_disconnection(self.peer, self.startup, seconds, self.counts)

    def started(self, startup: StartupMessage, raw: bytes, rest: bytes) -> None:
        """The startup packet arrived (``raw``: its bytes, for a warm lane to learn, or
        b""); ``rest`` is what followed it."""
        if raw:
            self.startup_raw = raw
        self._buffer = rest
        self.startup = startup
        config = self.context.config
        if config.log_connections:
            log.info(
                "client={client} connected: user={user} database={database}",
                client=self.peer,
                user=printable(startup.user),
                database=printable(startup.database),
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
        self._authenticated()
        self.admit()

    # -- inputs: the pool -----------------------------------------------------------

    def admit(self) -> None:
        """Ask for a client slot (the password check calls this once it succeeds)."""
        assert self.startup is not None
        if self.startup.database in CONSOLE_DATABASES:
            self._start_console()
            return
        context = self.context
        if context.when_topology_known(self._admit_later):
            self._move(WAITING)
            return
        node = context.cluster.primary
        if node is None:
            if len(context.cluster):
                self.fatal(
                    "57P03",
                    f"no backend node is up: all {len(context.cluster)} nodes are detached "
                    "(failover); pgpool-tw needs at least one",
                )
            else:
                self.fatal("08006", "no backend node is configured (backend_hostname0)")
            return
        key = self.key = pool_key(node.index, self.startup)
        if self._preauth and not self.verified:
            asks = context.pool.asks_password(key)
            if asks is None:
                if context.pool.wait_for_probe(key, self._admit_later):
                    self._move(WAITING)  # holding nothing: another login finds out
                    return
                self._probe = True
                asks = True
            if asks:
                self._prove()
                return
        self._authenticated()
        config = context.config
        if config.pool_mode_for(self.startup.user, self.startup.database) == TRANSACTION:
            if not context.pool.admit_transaction(self, self.key):
                self.fatal(
                    "53300",
                    f"sorry, too many clients already (max_client_conn = {config.max_client_conn})",
                )
                return
            self._in_pool = True
            self._tx_pid = context.cancels.unused_pid()
            self.admitted()
            return
        self._in_pool = True
        if self.context.pool.admit(self, self.key):
            self.admitted()
            return
        # Like a client in pgpool-II's listen queue: nothing happens until a slot
        # frees.  Reading goes on (so a client that gives up is noticed), but a
        # waiting client has nothing to say: more than a little is refused.
        self._move(WAITING)

    def _prove(self) -> None:
        """pgpool-II's pass-through login, but before the session takes a slot: the client
        answers a new server's password request itself, and only once the server let it
        in does it ask for a slot (``_proven``).  Until then it holds no slot and no place
        in a pool, so clients that never answer keep nobody waiting."""
        self._proving = True
        self.connect()

    def _proven(self, server: BackendProtocol) -> None:
        """The server let the client in and is up: now the session takes its slot.

        Waiting for one, it keeps its server (its password is not known to the pooler,
        so a second login could not be made for it)."""
        context, startup, key = self.context, self.startup, self.key
        assert startup is not None and key is not None
        if context.config.pool_mode_for(startup.user, startup.database) == TRANSACTION:
            if not context.pool.admit_transaction(self, key):
                context.pool.leases.release(server, True)
                self.fatal(
                    "53300",
                    "sorry, too many clients already "
                    f"(max_client_conn = {context.config.max_client_conn})",
                )
                return
            self._in_pool = True
            self._tx_pid = context.cancels.unused_pid()
            self._attach(server)  # not a member yet: its release joins the key if room
            return
        self._in_pool = True
        self._login_server = server
        if context.pool.admit(self, key):
            self.admitted()
        else:
            self._move(WAITING)

    def _start_console(self) -> None:
        """A login to the admin console's virtual database: the pooler answers it alone,
        for the users of admin_users and stats_users whose password it checked."""
        assert self.startup is not None
        context, user = self.context, self.startup.user
        config, console = context.config, context.console
        if console is None or not self.verified:
            self.fatal(
                "28000",
                "the admin console needs enable_pool_hba = on: pgpool-tw checks its users' "
                "passwords itself (pool_hba.conf and pool_passwd)",
            )
            return
        if user not in config.admin_users and user not in config.stats_users:
            self.fatal(
                "42501",
                f'permission denied: user "{user}" is in neither admin_users nor stats_users',
            )
            return
        statuses = b"".join(
            m.parameter_status(name, value)
            for name, value in (
                ("server_version", f"15.0 (pgpool-tw {__version__} console)"),
                ("server_encoding", "UTF8"),
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO, MDY"),
                ("integer_datetimes", "on"),
                ("standard_conforming_strings", "on"),
            )
        )
        end, _ = login_end(statuses, 0, 0, m.IDLE, not self._auth_ok_sent)
        self._auth_ok_sent = True
        self.io.send(end)
        self._console = console.open(user in config.admin_users, self.io.send, self.io.finish)
        self._move(RELAY)
        data, self._buffer = self._buffer, b""
        if data:
            self._console.feed(data)

    def _admit_later(self) -> None:
        if self.state == WAITING and not self._in_pool:
            self.admit()

    def admitted(self) -> None:
        """A client slot is ours: reuse a pooled server connection or open one."""
        if self.state == CLOSED:
            return
        pause = self.context.pause
        if pause.active and self.startup is not None and pause.paused(self.startup.database):
            # PAUSE: connected, waiting for RESUME.
            self._move(WAITING)
            pause.hold(self.startup.database, self.admitted)
            return
        server, self._login_server = self._login_server, None
        if server is not None:
            self._move(CONNECTING)
            self._attach(server)
            return
        # Until a server is attached, client bytes are kept, never parsed as startup.
        self._move(WAITING)
        if self._tx_pid:
            # Transaction pooling: the login takes its server from the key's leases too,
            # waiting its turn when default_pool_size servers are busy.
            self._ticket = self.context.pool.leases.lease(
                self.key, self._acquired, self._login_expired, self.verified
            )
            return
        self.context.pool.acquire(self.key, self._acquired, self.verified)

    def _acquired(self, server: Optional[BackendProtocol]) -> None:
        self._ticket = None
        if self.state == CLOSED:
            if server is not None:
                self._give_back(server, True)
            elif self._tx_pid:
                self.context.pool.leases.open_failed(self.key)
        elif server is not None:
            self._reuse(server)
        else:
            self._placed = bool(self._tx_pid)  # a place for a new server is ours
            self.connect()

    def _login_expired(self) -> None:
        self._ticket = None
        self.fatal("53300", query_wait_text(self.context.config))

    def connect(self, tls_override: Optional[Any] = None) -> None:
        """Log in on a new server connection to the node of the session's pool key."""
        key, startup = self.key, self.startup
        assert key is not None and startup is not None
        node = self.context.cluster.get(key.node)
        if node is None:
            self.fatal("08006", f"backend node {key.node} is no longer configured")
            return
        self._move(CONNECTING)
        login = self.server_login = ServerLogin(self, self._password, tls_override is not None)
        login.start(node.backend, self.context.connect(node.backend, startup, login, tls_override))
        data, self._buffer = self._buffer, b""
        if data:
            login.client_data(data)

    def _reuse(self, server: BackendProtocol) -> None:
        """pgpool-II's connect_using_existing_connection, with the name quoted."""
        assert self.startup is not None
        self.server = server
        server.owner = None
        server.keeper = self  # told if the server goes away while SET runs
        wanted = self.startup.application_name
        if server.params.get("application_name", "") == wanted:
            self._attach(server)
            return
        self._move(SETTING)
        server.run([set_application_name(wanted)], self._name_set)

    def _name_set(self, server: BackendProtocol, ok: bool) -> None:
        if self.state == CLOSED:
            self.server = None
            self._give_back(server, ok)
        elif ok:
            self._attach(server)
        else:
            self.server = None
            server.keeper = None  # its loss, if that was the failure, is not ours now
            self._give_back(server, False)
            self.connect()

    def _give_back(self, server: BackendProtocol, reusable: bool) -> None:
        """A login's server it will not use: to the pool it came from (transaction mode's
        leases count it against default_pool_size)."""
        startup = self.startup
        config = self.context.config
        if self._tx_pid or (
            startup is not None
            and config.pool_mode_for(startup.user, startup.database) == TRANSACTION
        ):
            self.context.pool.leases.release(server, reusable)
        else:
            self.context.pool.give_back(server, reusable)

    # -- inputs: the server connection (backend.ServerOwner once attached or reused) --

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """The server went away under this session: tell the client and close.

        A load-balancing server that owed nothing is let go: the session reads from
        the primary from then on.
        """
        if self.state == RELAY:
            self.context.server_failed(server.node.index, why)
        stream = self.tx
        if stream is not None and self.state == RELAY:
            if server is stream.server:
                log.warn(
                    "client={client} server={server} lost mid-transaction: {why}",
                    client=self.peer,
                    server=server.node.address,
                    why=why,
                )
                self._let_go()
                self.context.pool.leases.forget(server)
                if stream.server_at_boundary and stream.pending:
                    text = "server closed the connection unexpectedly"
                    self.io.send(m.error_response("08006", text))
                self.io.close()
            return
        if server is self.lb_server and self._lb_lost(server, why):
            return
        if self.state == RELAY and self.server is not None:
            log.warn(
                "client={client} server={server} lost mid-session: {why}",
                client=self.peer,
                server=server.node.address,
                why=why,
            )
            self._end_relay("08006", "server closed the connection unexpectedly", server)
        elif self.state in (CONNECTING, SETTING):
            self.server = None
            self.fatal("08006", f"server closed the connection during login: {why}")

    def _end_relay(self, sqlstate: str, text: str, lost: Optional[BackendProtocol] = None) -> None:
        """End a relaying session: its servers are closed (``lost`` is gone already), the
        client gets the error when its stream is at a message boundary, then the close."""
        tracker, primary = self.tracker, self.server
        assert tracker is not None and primary is not None
        self._stop_relay(primary)
        if lost is not primary:
            self.context.pool.give_back(primary, False)
        lb, self.lb_server = self.lb_server, None
        if lb is not None and lb is not lost:
            self.context.pool.give_back(lb, False)
        if tracker.server_at_boundary and (lost is None or tracker.pending):
            # A server that closed while its client owed it nothing said why itself,
            # if at all (FATAL 57P01 at a fast restart): a second error would be read
            # as the answer to the client's next statement (issue #20's soak).
            self.io.send(m.error_response(sqlstate, text))
        self.io.close()

    def node_detached(self, index: int, text: str) -> None:
        """Failover detached node ``index``: a session that writes there ends with
        ``text`` (57P01, as for an administrator's command); one that only reads there
        carries on with its primary when that leg is idle, else it ends too.  A session
        still being admitted or logging in there is refused."""
        state = self.state
        if state == CLOSED:
            return
        server = self.server
        stream = self.tx
        if stream is not None and state == RELAY:
            # Its next transactions would go to that node: the client reconnects instead.
            tx_key = self.key
            if tx_key is not None and tx_key.node == index:
                self.fatal("57P01", text)
            return
        if state == RELAY and server is not None:
            lb = self.lb_server
            dropped = lb is not None and lb.node.index == index and self._drop_lb(lb)
            reads_there = lb is not None and lb.node.index == index and not dropped
            if server.node.index == index or reads_there:
                self._end_relay("57P01", text)
            return
        key = self.key
        balancing = self._balance is not None and self._lb_node == index
        if (key is not None and key.node == index) or balancing:
            self.fatal("57P01", text)

    def _drop_lb(self, server: BackendProtocol) -> bool:
        """Let a live load-balancing server go (its node was detached) when it is idle."""
        stream = self.routed
        leg = server.tracker
        if stream is None or not isinstance(leg, Leg) or not stream.drop_leg(leg, True):
            return False
        self.io.drop_leg(server)
        self.lb_server = None
        self.context.pool.give_back(server, False)
        log.info(
            "client={client} load-balancing node {node} detached: reading from the primary",
            client=self.peer,
            node=server.node.index,
        )
        return True

    @property
    def write_node(self) -> Optional[int]:
        """The node this session's writes go to (its pool key's), once it has a key."""
        key = self.key
        return key.node if key is not None else None

    # -- what the new server's login (login.ServerLogin) reports -----------------------

    def server_said_ok(self, raw: bytes) -> None:
        """The server's AuthenticationOk, relayed unless the pooler sent its own."""
        if self._proving:
            self._authenticated()
            login = self.server_login
            if login is not None and login.server is not None and self.key is not None:
                self.context.pool.learn_login(self.key, login.server.asked_password)
        if not self._auth_ok_sent:
            self._auth_ok_sent = True
            self.io.send(raw)

    def server_logged_in(self, server: BackendProtocol) -> None:
        context = self.context
        context.node_up(server.node)
        if self.key is not None:
            context.pool.learn_login(self.key, server.asked_password)
        if self._placed:
            self._placed = False
            context.pool.leases.opened(server)
        if self._proving:
            self._proving = False
            if self.state == CONNECTING:
                self._proven(server)
            else:
                self._give_back(server, True)
            return
        if self.state == CONNECTING:
            self._attach(server)
        else:
            # The client left while this login finished: the pool decides its fate.
            self._give_back(server, True)

    # -- the session ------------------------------------------------------------------

    def _attach(self, server: BackendProtocol) -> None:
        """Send the login's end (as a direct connection would) and start relaying.

        A session that routes opens its load-balancing server first (``BalanceLeg``).
        """
        self.server = server
        if self._lb_node is None and not self._tx_pid and self._open_balance(server):
            return
        self._secret = cancel.new_secret()
        end, _ = login_end(
            server.parameter_statuses(),
            self._tx_pid or server.pid,
            self._secret,
            server.status,
            not self._auth_ok_sent,
        )
        self.io.send(end)
        if self._tx_pid:
            self._start_transactions(server)
            return
        self._start_session(server)
        warm = self.context.warm
        if warm is not None and self.routed is None:
            warm.learn(self.io, server)
        data, self._buffer = self._buffer, b""
        if data:
            self.io.replay(data)

    # -- transaction pooling (transaction/: the stream; lease.py: the next server) ------

    def _start_transactions(self, server: BackendProtocol) -> None:
        """Logged in: from now on a server is held only while a transaction runs."""
        context, startup = self.context, self.startup
        assert startup is not None and self.key is not None
        args = (
            self.io.send,
            self,
            context.statement_names,
            context.config.max_prepared_statements,
            startup.application_name,
            server,
        )
        statements = statements_for(context.config, lambda: self.peer)
        stream = self.tx = (
            TransactionStream(*args)
            if statements is None
            else LoggedTransactionStream(statements, *args)
        )
        self.server = None
        self.tracker = stream  # type: ignore[assignment]
        server.attach(self, _nowhere, stream)  # type: ignore[arg-type]
        server.book.totals.of(self.key).logins += 1
        context.cancels.register(self._tx_pid, self._secret, self)
        lb = context.lb_node_for(startup, server.node.index)
        self._tx_lb = lb if lb != server.node.index else None
        self._move(RELAY)
        # The C lane runs a session's simple transactions only where they all go to one
        # node (with a load-balancing node, each transaction is routed here), and only
        # when their statements need not be logged (the lane never shows them to Python).
        laned = self._tx_lb is None and statements is None
        lane = context.pool.leases.lane(self.key) if laned else None
        self.io.start_tx_relay(stream, lane, self.tx_adopted, self._tx_wait_expired)  # type: ignore[arg-type]
        self.io.tx_attach(server)
        if context.events.observers:
            self._info = SessionInfo(
                self.peer, startup.user, startup.database, startup.application_name, server.pid
            )
            context.events.fire("client_session_started", self._info)
        if self._draining:
            self._drain_watch()
        data, self._buffer = self._buffer, b""
        if data:
            self.io.replay(data)
        if self.state == RELAY:
            stream.settle()

    def want_server(self, first: bytes) -> None:
        """The stream has a transaction to start and no server (``TxOwner``): on the
        load-balancing node when it is a read the session may send there, else on the
        primary (the session's own key)."""
        key = self.key
        assert key is not None and self.startup is not None
        pause = self.context.pause
        if pause.active and pause.paused(self.startup.database):
            pause.hold(self.startup.database, lambda: self._want_resumed(first))
            return
        if self._tx_lb is not None:
            if not self._tx_only_reads(first):
                self._tx_wrote = self.context.cluster.rounds
            elif self._tx_may_read_there():
                key = pool_key(self._tx_lb, self.startup)
        check = self._password
        auth = check.login.backend_auth() if check is not None else None
        borrow = self._borrow = Borrow(self, key, auth)
        borrow.start()

    def _want_resumed(self, first: bytes) -> None:
        if self.state == RELAY and self.tx is not None:
            self.want_server(first)

    def _tx_only_reads(self, first: bytes) -> bool:
        """The transaction ``first`` starts is one autocommit statement that only reads
        (cluster/classify.py: PostgreSQL's parser); anything else may write."""
        stream = self.tx
        assert stream is not None
        if stream.status != m.IDLE:
            return False
        try:
            text = stream.statement_text(first)
        except ValueError:
            return False
        return text is not None and self.context.classifier.classify(text).route == ROUTE_STANDBY

    def _tx_may_read_there(self) -> bool:
        """A read may go to the load-balancing node: it takes reads now, and the session's
        writes allow it (disable_load_balance_on_write other than off or transaction keeps a
        session that wrote on the primary; read_your_writes waits until a replication-check
        round begun after the write saw the node caught up)."""
        lb = self._tx_lb
        assert lb is not None
        context = self.context
        cluster = context.cluster
        node = cluster.get(lb)
        if not readable(node):
            return False
        wrote = self._tx_wrote
        if wrote < 0:
            return True
        config = context.config
        if config.disable_load_balance_on_write not in ("off", "transaction"):
            return False
        if config.read_your_writes:
            assert node is not None
            return cluster.rounds >= wrote + 2 and node.delay_bytes == 0
        return True

    def tx_server(self, server: BackendProtocol) -> None:
        """The server for the next transaction (``Borrow``)."""
        self._borrow = None
        stream = self.tx
        if self.state != RELAY or stream is None:
            self.context.pool.leases.release(server, True)
            return
        server.attach(self, _nowhere, stream)  # type: ignore[arg-type]
        self.io.tx_attach(server)
        stream.attach(server)

    # -- pgpool-II's SQL commands (SHOW pool_*, PGPOOL SHOW/SET/RESET) -----------------

    def local_query(self, msg: bytes, status: int) -> Optional[bytes]:
        """The pooler's answer to Query ``msg`` when it is one of pgpool-II's commands
        (ReadyForQuery with ``status`` included), else None: the server's to answer."""
        command = local_command(msg[5:-1].decode("utf-8", "replace"))
        return None if command is None else self.local_answer(command, status)

    def local_answer(self, command: LocalCommand, status: int) -> bytes:
        """The answer to one of pgpool-II's SQL commands, ReadyForQuery included."""
        if command.verb == SHOW:
            lb_node = self._lb_node if self._lb_node is not None else self._tx_lb
            body = self.context.show_pool(command.name, lb_node)
        else:
            overrides = self.overrides
            if overrides is None:
                overrides = self.overrides = {}
            body = pgpool_command(command, self.context.config, overrides)
            own = self.context.own_idle_limits
            if "client_idle_limit" in overrides:
                own.add(self.io)
            else:
                own.discard(self.io)
        return body + m.ready_for_query(status)

    def release_server(self) -> None:
        """The transaction ended with nothing owed: the server goes back (``TxOwner``),
        and the client's next simple transaction may run on the C lane."""
        server = self._let_go()
        if server is not None:
            self.context.pool.leases.release(server, True)
        if self._draining:
            self._drain_soon()
            return
        pause = self.context.pause
        if pause.active and self.startup is not None and pause.paused(self.startup.database):
            return  # PAUSE: the next transaction asks Python, which holds it
        stream = self.tx
        if stream is not None and stream.quiet and self.state == RELAY:
            self.io.tx_arm(-1 if stream.wanted else settings_tag(stream.application_name))

    def hold_server(self) -> None:
        """A pinned client is between transactions (``TxOwner``): its server stays its
        own, on the C lane when the client is there, until its next message."""
        stream = self.tx
        if stream is None or self.state != RELAY or stream.server is None:
            return
        if self._draining:
            self._drain_soon()
            return
        server = stream.server
        if self.io.tx_hold(server):
            stream.detached()

    def tx_adopted(self, tx: TxServer, raw_left: int, rest: bytes, status: int) -> None:
        """The C lane hands over the transaction it runs for this client: one simple
        Query sent, ``rest`` of its answer not forwarded yet (after ``raw_left`` body
        bytes of a message it had begun to forward); or, with a ``status``, a
        transaction block between statements."""
        server = tx.backend
        leases = self.context.pool.leases
        leases.adopted(server)
        stream = self.tx
        if stream is None:
            leases.release(server, False)
            return
        # Also while the session ends (_end_tx's tx_stop): the stream then decides, as
        # for a server it held itself (a pinned client's idle one is reset and reused).
        server.attach(self, _nowhere, stream)
        self.io.tx_attach(server)
        stream.adopt(server, raw_left, status)
        if rest:
            stream.feed_server(rest)

    def _tx_wait_expired(self) -> None:
        """The client waited query_wait_timeout on the C lane."""
        self.tx_failed("53300", query_wait_text(self.context.config))

    def _let_go(self) -> Optional[BackendProtocol]:
        """The stream and the glue let go of the server held now; it is returned, for
        the leases to take back."""
        stream = self.tx
        assert stream is not None
        server = stream.server
        if server is not None:
            stream.detached()
            self.io.tx_detach(server)
        return server

    def tx_failed(self, sqlstate: str, text: str) -> None:
        """No server for the next transaction: the client is told, and closed."""
        self._borrow = None
        log.warn("client={client} {text}", client=self.peer, text=text)
        self.fatal(sqlstate, text)

    def stream_broken(self, why: str) -> None:
        self.fatal("08P01", f"invalid frontend message: {why}")

    def _end_tx(self) -> None:
        """The client left (or is being ended): its server, if it holds one, goes back
        when the transaction was over (reset first when something pinned it), else it is
        closed."""
        stream = self.tx
        assert stream is not None
        self.io.tx_stop()  # a transaction the lane runs is the stream's first
        borrow, self._borrow = self._borrow, None
        if borrow is not None:
            borrow.abandon()
        server = self._let_go()
        leases = self.context.pool.leases
        if server is not None:
            clean = stream.in_sync and stream.status == m.IDLE
            if clean and stream.pinned:
                leases.reset_and_release(server)
            else:
                leases.release(server, clean)
        stream.close()
        # What the stream counted with no server held (its Terminate, at least).
        self.context.servers.totals.harvest(self.key, stream, self.counts)
        if self._tx_pid:
            self.context.cancels.unregister(self._tx_pid, self)
        info, self._info = self._info, None
        if info is not None:
            self.context.events.fire("client_session_ended", info)

    @property
    def pinned(self) -> tuple[str, ...]:
        """Why a transaction-mode client keeps its server (the stats snapshot shows it)."""
        stream = self.tx
        return tuple(sorted(stream.pinned)) if stream is not None else ()

    def resume(
        self, server: BackendProtocol, tracker: SessionTracker, secret: int, owed: bytes
    ) -> None:
        """Carry on a session the warm lane started (see lane/warm.py), owing ``owed``."""
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
        if self._lb_node is not None:
            self.tracker = self._start_routed(server)  # type: ignore[assignment]
            self._move(RELAY)
            self.io.start_relay(server, self.tracker, True, self.lb_server)  # type: ignore[arg-type]
        else:
            self.tracker = server.attach(self, self.io.send, tracker)
            self._move(RELAY)
            self.io.start_relay(server, self.tracker, False)
        if self._draining:
            self._drain_watch()
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
        self.routed = None
        self.context.cancels.unregister(server.pid, self)
        info, self._info = self._info, None
        if info is not None:
            self.context.events.fire("client_session_ended", info)

    def _release_server(self, reusable: bool) -> None:
        server = self.server
        assert server is not None
        self._stop_relay(server)
        self.context.pool.give_back(server, reusable)
        lb, self.lb_server = self.lb_server, None
        if lb is not None:
            self.context.pool.give_back(lb, reusable)

    # -- routing: the load-balancing leg ------------------------------------------------

    def _open_balance(self, server: BackendProtocol) -> bool:
        """Choose the load-balancing node; True while its server is being opened."""
        startup = self.startup
        assert startup is not None
        lb = self.context.lb_node_for(startup, server.node.index)
        if lb is None:
            return False
        self._lb_node = lb
        if lb == server.node.index:
            return False
        server.owner = None
        server.keeper = self  # told if the primary goes away meanwhile
        self._move(SETTING)
        check = self._password
        auth = check.login.backend_auth() if check is not None else None
        self._balance = BalanceLeg(self, pool_key(lb, startup), auth)
        self._balance.open()
        return True

    def balance_ready(self, server: Optional[BackendProtocol]) -> None:
        """The load-balancing server is ours (None: this session reads from the primary)."""
        self._balance = None
        if self.state == CLOSED or self.server is None:
            if server is not None:
                self.context.pool.give_back(server, True)
            return
        self.lb_server = server
        self._attach(self.server)

    def _start_routed(self, server: BackendProtocol) -> RoutedStream:
        """Both legs attached to one ``RoutedStream`` that answers the client as one server."""
        assert self._lb_node is not None
        primary = Leg(server.node.index, server.send, server.status, server.params, server.pid)
        lb_server = self.lb_server
        lb: Optional[Leg] = None
        if lb_server is not None:
            lb = Leg(
                lb_server.node.index,
                lb_server.send,
                lb_server.status,
                lb_server.params,
                lb_server.pid,
            )
        node = lb.node if lb is not None else server.node.index
        stream = RoutedStream(
            primary,
            lb,
            self.io.send,
            self.context.routing_rules(node, server.node.index, self.local_answer),
            self._stream_broken,
        )
        server.attach(self, _nowhere, primary)  # type: ignore[arg-type]
        if lb_server is not None:
            lb_server.attach(self, _nowhere, lb)  # type: ignore[arg-type]
        self.routed = stream
        return stream

    def _stream_broken(self, why: str) -> None:
        self.fatal("08P01", f"invalid frontend message: {why}")

    def _lb_lost(self, server: BackendProtocol, why: str) -> bool:
        """The load-balancing server closed; True when the session carries on without it."""
        stream = self.routed
        self.lb_server = None
        leg = server.tracker
        if stream is not None and isinstance(leg, Leg) and stream.drop_leg(leg):
            self.io.drop_leg(server)
            log.warn(
                "client={client} load-balancing server {server} lost: {why}; "
                "reading from the primary",
                client=self.peer,
                server=server.node.address,
                why=why,
            )
            return True
        return stream is None and self.state != RELAY

    def _give_back_primary(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.keeper = None
            self.context.pool.give_back(server, True)

    def cancel_targets(self) -> list[cancel.Target]:
        """The servers a CancelRequest for this session goes to now: those that run a
        statement of its client, each with the test that the statement may still run
        when the request is sent (``cancel.py``); none when nothing runs."""
        tx = self.tx
        if tx is not None:
            held = tx.server
            if held is not None:
                still = cancel.in_flight(tx)
                return [] if still is None else [self._target(held, still, lambda: tx.server)]
            lane = self.io.tx_lane_client()
            server = self.io.tx_fast_server()
            still = cancel.lane_in_flight(lane) if lane is not None else None
            if server is None or still is None:
                return []
            return [self._target(server, still, self.io.tx_fast_server)]
        server, tracker = self.server, self.tracker
        if server is None or tracker is None or self.state != RELAY:
            return []
        stream = self.routed
        if stream is None:
            still = cancel.in_flight(tracker)
            return [] if still is None else [self._target(server, still, lambda: self.server)]
        targets = []
        for index, leg_server in enumerate((server, self.lb_server)):
            if leg_server is None or index >= len(stream.legs):
                continue
            still = cancel.leg_in_flight(stream, index)
            if still is not None:
                held_by = (lambda: self.server) if index == 0 else (lambda: self.lb_server)
                targets.append(self._target(leg_server, still, held_by))
        return targets

    @staticmethod
    def _target(
        server: BackendProtocol,
        still: cancel.Still,
        holder: Callable[[], Optional[BackendProtocol]],
    ) -> cancel.Target:
        """``server`` as a cancel's target, while this session holds it (a server that went
        back to the pool runs another client's statements)."""
        return cancel.Target(
            server.node, server.pid, server.secret, lambda: holder() is server and still()
        )

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

    @property
    def is_console(self) -> bool:
        """An admin console login (a drain leaves it to the end)."""
        return self._console is not None

    def drain(self) -> None:
        """A drain (a rolling restart): end with FATAL 57P01 at the next transaction
        boundary (the server's idle ReadyForQuery with nothing owed either way), so the
        client reconnects to another pooler; at once when the session is idle now.

        A client that has sent nothing since its login (or is still logging in) runs its
        first transaction first: it logged in to send one, and a statement already on
        its way would meet the error instead of an answer.  Console logins are left to
        the shutdown that ends the drain."""
        if self._draining or self.state == CLOSED or self._console is not None:
            return
        self._draining = True
        if self.state == RELAY:
            self._drain_watch()

    def _drain_watch(self) -> None:
        """From now on Python sees this session's bytes (the C relay, router or lane let
        them go) and looks for a boundary after each answer."""
        spoke = self.io.drain_watch(self.server, self.routed, self._drain_check)
        if spoke:
            self._drain_check()

    def _drain_soon(self) -> None:
        """A transaction-mode client's transaction ended; decided once the stream is done
        with the answer's last chunk."""
        self.context.reactor.callLater(0, self._drain_check)

    def _drain_check(self) -> None:
        if self.state != RELAY:
            return
        tracker = self.tx if self.tx is not None else self.tracker
        if tracker is None or not tracker.in_sync or tracker.status != m.IDLE:
            return
        log.info("client={client} drained at a transaction boundary", client=self.peer)
        if self.tx is not None:
            self._end_tx()
        else:
            self._release_server(True)
        self._move(CLOSED)
        self._leave_pool()
        self.io.send(m.error_response("57P01", DRAIN_TEXT))
        self.io.finish()

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

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _timed_out(self) -> None:
        """authentication_timeout, counted from the accept: the client is closed, told why
        when it got past its startup packet (PostgreSQL's words), and logged with the
        stage it stopped in."""
        self._timer = None
        stage = self._stage()
        context = self.context
        context.preauth.note_timeout(self.peer, stage, context.config.authentication_timeout)
        if self.state != STARTUP:
            self.io.send(m.error_response("57014", "canceling authentication due to timeout"))
        self.io.close()

    def _stage(self) -> str:
        """What the login was waiting for, for the log."""
        state = self.state
        if state == STARTUP:
            return self._handshake.stage()
        if state == AUTHENTICATING:
            return "the client's password (pool_hba.conf)"
        if state == CONNECTING and self.server_login is not None:
            return self.server_login.stage()
        return "the primary to be known (the first replication check)"


def _nowhere(data: bytes) -> None:
    """A routed leg's peer writer: the stream sends to the client itself."""
