"""One client connection's session: attach, relay, detach.

``FrontendProtocol`` extends the login (``login.ClientLogin``: startup packet,
TLS, authentication, a pooled or new server connection) with the session that
follows it: ``RELAY → CLOSED``.  It sends the end of the login as a direct
connection would, relays bytes through the session tracker (or hands both
sockets to the C loop), and on Terminate, end of file or a lost server gives
the server connection back to the pool in a state the next client may use.
Only methods of these two classes move a client between states.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgpool_tw.config.authfiles import AuthFiles
from pgpool_tw.config.settings import Config
from pgpool_tw.config.tls import TLSContexts
from pgpool_tw.engine import fastpoll
from pgpool_tw.net import accepted
from pgpool_tw.net.deadlines import Deadlines
from pgpool_tw.net.transport import PeerProducer, Writer, link, make_writer, tune_socket, unlink
from pgpool_tw.pool.backend import BackendProtocol, ServerBook
from pgpool_tw.pool.pool import Pool
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.session.cancel import CancelRegistry, new_secret
from pgpool_tw.session.login import CLOSED, CONNECTING, RELAY, WAITING, ClientLogin, discard
from pgpool_tw.stats.events import EventHub, SessionInfo

if TYPE_CHECKING:
    from pgpool_tw.engine.warm import WarmLane

log = Logger()


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
        #: Every TCP port this factory listens on set the client socket options for
        #: the clients it accepts (service.py); otherwise each client sets them.
        self.listeners_tuned = False
        #: Warm logins served by the C loop (service.py starts it under ``twistd pgpool``).
        self.warm: Optional[WarmLane] = None
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


class FrontendProtocol(ClientLogin):
    """A client connection from its first byte to its close."""

    def __init__(self, factory: FrontendFactory, address: Any = None) -> None:
        super().__init__(factory, address)
        self.tracker: Optional[SessionTracker] = None
        self.server_write: Writer = discard
        #: Chunks received while relaying; client_idle_limit compares it across ticks.
        self.received = 0
        self._idle_mark = -1
        self._idle_since = 0.0
        self._producers: Optional[tuple[PeerProducer, PeerProducer]] = None
        #: The C loop's handle while it forwards this session (fastpoll.start_relay).
        self._relay: Any = None
        self._secret = 0
        self._session: Optional[SessionInfo] = None

    # -- Twisted -----------------------------------------------------------------

    def connectionMade(self) -> None:
        if not self.factory.listeners_tuned:
            tune_socket(self.transport)
        self.send = make_writer(self.transport)
        self.factory.clients.add(self)
        self._start_timer()

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
        else:
            super().server_lost(server, why)

    # -- the session -------------------------------------------------------------

    def _attach(self, server: BackendProtocol) -> None:
        """Send the login's end (as a direct connection would) and start relaying."""
        self._stop_timer()
        self.server = server
        self._secret = new_secret()
        out = [] if self._auth_ok_sent else [m.authentication_ok()]
        out.append(server.parameter_statuses())
        out.append(m.backend_key_data(server.pid, self._secret))
        out.append(m.ready_for_query(server.status))
        self.send(b"".join(out))
        self._start_session(server)
        warm = self.factory.warm
        if warm is not None:
            warm.learn(self, server)
        if self._buffer:
            data, self._buffer = self._buffer, b""
            self.dataReceived(data)

    def resume(
        self, server: BackendProtocol, tracker: SessionTracker, secret: int, owed: bytes
    ) -> None:
        """Carry on a session the warm lane started (see warm.py), owing the client ``owed``."""
        self._stop_timer()
        self.startup = server.startup
        self.key = server.pool_key
        self._in_pool = True
        self.factory.pool.enter(self, self.key)
        self.server = server
        self._secret = secret
        if owed:
            self.send(owed)
        self._start_session(server, tracker)

    def _start_session(
        self, server: BackendProtocol, tracker: Optional[SessionTracker] = None
    ) -> None:
        self.factory.cancels.register(server.pid, self._secret, self)
        self.tracker = server.attach(self, self.send, tracker)
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
        self.server_write = discard
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
