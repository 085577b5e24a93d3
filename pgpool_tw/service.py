"""The public service: listeners, signals, reload, shutdown modes, the clock tick.

``PgpoolService`` is what ``twistd pgpool`` runs and what users add to their own
Twisted ``Application``.  It binds its TCP and unix-socket listeners in
``privilegedStartService`` so a port in use fails at start, not later.  Signal
handling is opt-in (``handle_signals=True``, which ``tap.py`` sets): an
application embedding the pooler keeps its own.  Nothing but ``tap.py`` and
users import this module.

Signals, as pgpool-II's: SIGHUP reloads the configuration; SIGTERM is a smart
shutdown (stop listening, let sessions finish, bounded by
``smart_shutdown_timeout``); SIGINT a fast one (clients get FATAL 57P01, servers
a Terminate); SIGQUIT an immediate one; SIGUSR1 closes idle server connections.
SIGUSR2 (pgpool-tw's; pgpool-II has no drain) drains for a rolling restart: stop
listening, end each client with FATAL 57P01 at its next transaction boundary, and exit
when the last is gone (fast after ``drain_timeout``); the console's ``SHUTDOWN
WAIT_FOR_SERVERS`` does the same.

Nodes: the health check (checks/health.py) and failover (checks/failover.py) run in every
mode; ``detach_node``, ``attach_node`` and ``promote_node`` are pcp_detach_node,
pcp_attach_node and pcp_promote_node for embedding code.  Node statuses are kept in
``logdir``/pgpool_status across restarts unless ``discard_status`` (twistd's ``-D``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pgpool_tw import systemd
from pgpool_tw.admin.console import ConsoleService
from pgpool_tw.admin.metrics import metrics_site
from pgpool_tw.admin.pcp import PcpFactory, PcpService
from pgpool_tw.admin.pgpool_show import PgpoolReports
from pgpool_tw.admin.snapshot import Snapshot, take_connections, take_snapshot
from pgpool_tw.checks.failover import Failover
from pgpool_tw.checks.health import HealthCheck
from pgpool_tw.checks.sr_check import SrCheck
from pgpool_tw.checks.status_file import read_status, status_path
from pgpool_tw.cluster.cluster import settings_report
from pgpool_tw.config.authfiles import AuthFilesError, load_auth_files
from pgpool_tw.config.pcpconf import PcpUsers, load_pcp_conf, pcp_path
from pgpool_tw.config.report import plan_reload
from pgpool_tw.config.settings import Config, ConfigError, load_config
from pgpool_tw.config.tls import TLSConfigError, load_tls
from pgpool_tw.lane.warm import WarmLane
from pgpool_tw.listeners import accept_backlog, describe, listen, listen_control, listen_tcp
from pgpool_tw.net.transport import set_keepalives
from pgpool_tw.pool.pool import Pool
from pgpool_tw.session.frontend import FrontendFactory
from pgpool_tw.stats.events import EventHub

log = Logger()

#: How long a stop waits for connections to close before aborting them.
CLOSE_WAIT = 5.0

SMART, DRAIN, FAST, IMMEDIATE = "smart", "drain", "fast", "immediate"

#: Shutdown modes from the gentlest: a later one may only be harder.
_ORDER = (None, SMART, DRAIN, FAST, IMMEDIATE)


class PgpoolService(MultiService):
    """A pgpool-tw instance: listeners, a pool and its client sessions.

    Build it from a parsed ``Config`` (or with ``from_file``) and add it to an
    application like any Twisted service.  ``add_observer`` lets code watch
    sessions and server connections (see ``pgpool_tw.stats.events.IPoolEvents``).
    """

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        handle_signals: bool = False,
        overrides: Optional[dict[str, Any]] = None,
        discard_status: bool = False,
        pcp_file: str = "",
    ) -> None:
        """``overrides`` are settings given on the command line; a reload keeps them.
        ``discard_status``: ignore pgpool_status (every node starts up), as pgpool-II's -D.
        ``pcp_file``: pcp.conf's path (pgpool-II's -F); '' is pcp.conf beside pgpool.conf.

        Raises AuthFilesError when enable_pool_hba is on and pool_hba.conf or
        pool_passwd cannot be used, TLSConfigError when a TLS file cannot.
        """
        super().__init__()
        self.overrides = dict(overrides or {})
        config = dataclasses.replace(config, **self.overrides)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.handle_signals = handle_signals
        self.events = EventHub()
        self.pool = Pool(config, reactor)
        #: The streaming replication check (streaming_replication mode only).
        self.sr_check: Optional[SrCheck] = None
        self.factory = FrontendFactory(config, self.pool, reactor, self.events)
        self.factory.console = ConsoleService(
            self.snapshot,
            lambda: self.config,
            self.reload,
            lambda: self.shutdown(FAST),
            lambda: take_connections(self.factory, self.pool, self.warm),
            self.factory.kill_database,
            self.factory.kill_client,
            self.factory.reconnect,
            drain=self.drain,
            smart=lambda: self.shutdown(SMART),
            pause=self.pause,
            resume=self.factory.resume_sessions,
            wait_close=self.wait_close,
        )
        self.factory.auth_files = load_auth_files(config)
        self.factory.tls = load_tls(config)
        for warning in self.factory.auth_files.warnings:
            log.warn("{line}", line=warning)
        #: Warm logins served by the C loop, when it runs this reactor (lane/warm.py).
        self.warm: Optional[WarmLane] = None
        factory = self.factory
        self.status_file = status_path(config.logdir)
        if not discard_status:
            self._load_status()
        #: The health check (health_check_period > 0 for some node).
        self.health_check = HealthCheck(
            reactor,
            lambda: self.config,
            lambda: factory.cluster,
            lambda index, why: self.failover.detach(index, why, automatic=True),
            secrets=lambda: factory.auth_files.secrets,
            tls_for=lambda node: factory.tls.for_server(node),
            tls_required=factory.tls.server_tls_required,
        )
        #: Node status changes, one at a time (checks/failover.py).
        self.failover = Failover(
            reactor,
            lambda: self.config,
            lambda: factory.cluster,
            factory,
            lambda: self.sr_check,
            self.status_file,
            login=self.health_check.login,
        )
        factory.failover = self.failover
        self.failover.save_status()
        #: SHOW pool_status, pool_processes, pool_pools, ... on any client connection.
        factory.reports = PgpoolReports(
            self.snapshot,
            lambda: self.config,
            lambda: take_connections(factory, self.pool, self.warm),
            lambda: self.health_check.stats,
        )
        self.ports: list[IListeningPort] = []
        #: The /metrics endpoint's listeners (metrics_listen_addresses), up until the end.
        self.metrics_ports: list[IListeningPort] = []
        self.shutting_down: Optional[str] = None
        self._ticker: Optional[LoopingCall] = None
        self._stopped: Optional[defer.Deferred[None]] = None
        self._port_stops: list[defer.Deferred[Any]] = []
        self._init_pcp(pcp_file)
        #: The next look of a smart shutdown's or a drain's wait.
        self._wait_call: Optional[Any] = None
        #: The next looks of the console's PAUSE and WAIT_CLOSE (``_when``).
        self._looks: dict[defer.Deferred[None], Any] = {}

    def _load_status(self) -> None:
        """pgpool_status: nodes that were down when the pooler stopped stay down."""
        cluster = self.factory.cluster
        down, warning = read_status(self.status_file, [node.index for node in cluster])
        if warning is not None:
            log.warn("{line}", line=warning)
        for index in sorted(down):
            cluster.detach(index)
            log.info(
                "node {index} ({address}) is down in {path}: it stays detached (-D forgets)",
                index=index,
                address=cluster[index].address,
                path=self.status_file,
            )

    # -- nodes: pcp_detach_node, pcp_attach_node, pcp_promote_node ------------------

    def detach_node(self, index: int) -> defer.Deferred[bool]:
        """Detach node ``index`` as pcp_detach_node does (failover_command runs; fires
        False when it is unknown, already down or flagged DISALLOW_TO_FAILOVER)."""
        return self.failover.detach(index, "detached by request")

    def attach_node(self, index: int) -> defer.Deferred[bool]:
        """Attach a detached node as pcp_attach_node does (failback_command runs)."""
        return self.failover.attach(index)

    def promote_node(self, index: int, switchover: bool = False) -> defer.Deferred[bool]:
        """pcp_promote_node: take node ``index`` as primary (``switchover``, its ``-s``:
        detach the primary and let failover_command promote ``index``)."""
        return self.failover.promote(index, switchover)

    @classmethod
    def from_file(
        cls, path: str, reactor: Any = None, handle_signals: bool = False
    ) -> PgpoolService:
        """Build from a pgpool.conf path; ConfigError names file, line and setting."""
        return cls(load_config(path), reactor, handle_signals)

    def add_observer(self, observer: Any) -> None:
        """Tell ``observer`` of events from now on; warm logins stay on (see IPoolEvents)."""
        self.events.add(observer)
        if self.warm is not None:
            self.warm.watch.observe()  # the C lane records its sessions from now on

    def remove_observer(self, observer: Any) -> None:
        if self.warm is not None:
            self.warm.watch.drain()  # what it was owed, before it goes
        self.events.remove(observer)
        if self.warm is not None:
            self.warm.watch.observe()

    def snapshot(self) -> Snapshot:
        """Clients, servers, waiting clients and per-pool counters now (``admin.snapshot``)."""
        return take_snapshot(self.reactor.seconds(), self.factory, self.pool, self.warm)

    # -- addresses ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port clients reach (the bound one when ``port = 0``)."""
        for listening in self.ports:
            address: Any = listening.getHost()
            if hasattr(address, "port"):
                return int(address.port)
        return self.config.port

    @property
    def socket_paths(self) -> list[str]:
        return [os.path.join(d, f".s.PGSQL.{self.port}") for d in self.config.socket_dirs]

    # -- start -------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        if self.handle_signals:
            # Before the port accepts: a reload sent by whoever saw it accept is queued for
            # the reactor, not fatal (SIGHUP's default action ends the process). Twisted
            # leaves these two signals alone; the rest wait for ``_running``.
            self._install_signals((signal.SIGHUP, signal.SIGUSR1))
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        self.shutting_down = None
        self.pool.closing = False
        if not self.ports:
            self._listen()
        self._start_lane()
        super().startService()
        self._start_ticker()
        self._start_sr_check()
        self.failover.start()
        self.health_check.start()
        log.info(
            "pgpool-tw listening on {where}",
            where=", ".join(describe(p) for p in self.ports) or "nothing",
        )
        if self.metrics_ports:
            log.info(
                "metrics at http://{where}/metrics",
                where=", ".join(describe(p) for p in self.metrics_ports),
            )
        self.reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        """The reactor runs (and has installed its own signal handlers): take over."""
        if self.handle_signals:
            self._install_signals()
            systemd.notify("READY=1", f"MAINPID={os.getpid()}")

    def _listen(self) -> None:
        config = self.config
        set_keepalives(
            config.tcp_keepalives_idle, config.tcp_keepalives_interval, config.tcp_keepalives_count
        )
        self.ports, self.factory.listeners_tuned = listen(self.reactor, config, self.factory)
        if config.metrics_listen_addresses and not self.metrics_ports:
            try:
                self.metrics_ports = listen_tcp(
                    self.reactor,
                    config.metrics_listen_addresses,
                    config.metrics_port,
                    metrics_site(self.snapshot),
                )
            except Exception:
                for listening in self.ports:
                    listening.stopListening()
                self.ports = []
                raise
        try:
            self._listen_pcp()
        except Exception:
            for listening in self.ports + self.metrics_ports:
                listening.stopListening()
            self.ports, self.metrics_ports = [], []
            raise

    # -- PCP (admin/pcp.py): open while pcp.conf exists, closed last ------------------

    def _init_pcp(self, pcp_file: str) -> None:
        self.pcp_file = pcp_file
        self.pcp_users: Optional[PcpUsers] = None
        #: The PCP port's listeners (pcp_listen_addresses, pcp_socket_dir).
        self.pcp_ports: list[IListeningPort] = []
        self.pcp = PcpFactory(
            PcpService(
                self.snapshot,
                lambda: self.config,
                lambda: self.health_check.stats,
                lambda: take_connections(self.factory, self.pool, self.warm),
                self.detach_node,
                self.attach_node,
                self.promote_node,
                self.reload,
                self.shutdown,
                lambda: self.pcp_users,
                self.reactor,
            )
        )
        self._load_pcp_users(started=False)

    def _load_pcp_users(self, started: bool = True) -> None:
        """pcp.conf, at start and at each reload; its warnings when they changed."""
        path = pcp_path(self.config.path, self.pcp_file)
        if path is None:
            return  # built in code without pcp_file: no PCP port
        old, self.pcp_users = self.pcp_users, load_pcp_conf(path)
        if self.pcp_users is None:
            if old is not None or not started:  # said once, not at every reload
                log.warn(
                    "{path} not found or not readable: the PCP port {state}",
                    path=path,
                    state="lets nobody in" if self.pcp_ports else "does not listen",
                )
            return
        if old is None or old.warnings != self.pcp_users.warnings:
            for warning in self.pcp_users.warnings:
                log.warn("{line}", line=warning)

    def _listen_pcp(self) -> None:
        config = self.config
        wanted = config.pcp_listen_addresses or config.pcp_socket_dirs
        if self.pcp_ports or self.pcp_users is None or not wanted:
            return
        self.pcp_ports = listen_control(
            self.reactor,
            config.pcp_listen_addresses,
            config.pcp_port,
            config.pcp_socket_dirs,
            self.pcp,
        )
        log.info("PCP listening on {where}", where=", ".join(describe(p) for p in self.pcp_ports))

    @property
    def pcp_port(self) -> Optional[int]:
        """The PCP port's bound TCP port (useful with ``pcp_port = 0``), if it listens."""
        for listening in self.pcp_ports:
            address: Any = listening.getHost()
            if hasattr(address, "port"):
                return int(address.port)
        return None

    @property
    def metrics_port(self) -> Optional[int]:
        """The bound port of /metrics (useful with ``metrics_port = 0``), if it listens."""
        for listening in self.metrics_ports:
            address: Any = listening.getHost()
            return int(address.port)
        return None

    def _start_lane(self) -> None:
        """Warm logins in C, when the C loop runs this reactor (``twistd pgpool``)."""
        warm = self.warm
        if warm is None or warm.lane.closing:
            warm = self.warm = WarmLane.start(self.factory, self.ports)
            self.factory.warm = warm
            self.pool.lender = warm

    def _start_sr_check(self, hold: bool = True) -> None:
        """Streaming replication mode: ask the nodes who is primary, now and every
        sr_check_period (checks/sr_check.py); at start, sessions wait for the first
        answer (after a reload the cluster keeps what it learned)."""
        self._stop_sr_check()
        config, factory = self.config, self.factory
        if config.clustering_mode != "streaming_replication" or len(config.backends) < 2:
            return  # one node is the primary there is: nothing to route, nothing to ask
        if not config.sr_check_user:
            log.warn(
                "{path}: sr_check_user is not set: the primary is not checked (node {node} is "
                "taken as primary) and replication delay is not measured",
                path=config.path or "pgpool.conf",
                node=config.backends[0].index,
            )
            return
        check = self.sr_check = SrCheck.from_config(
            self.reactor,
            lambda: factory.cluster,
            config,
            secrets=lambda: factory.auth_files.secrets,
            tls_for=lambda node: factory.tls.for_server(node),
            tls_required=factory.tls.server_tls_required,
            on_functions=factory.learn_functions,
            on_applied=factory.routing_changed,
            on_round=self.failover.on_round,
        )
        if hold and not factory.cluster.checked:
            factory.hold_sessions()
        first = check.start()
        first.addErrback(lambda failure: log.failure("sr_check failed", failure))
        first.addBoth(lambda _: factory.release_sessions())

    def _stop_sr_check(self) -> None:
        check, self.sr_check = self.sr_check, None
        if check is not None:
            check.stop()
        self.factory.release_sessions()

    def _start_ticker(self) -> None:
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        limit = self.config.client_idle_limit
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = self.reactor
        self._ticker.start(min(1.0, limit / 2) if limit > 0 else 1.0, now=False)

    def tick(self) -> None:
        """Once a second (or faster for a short client_idle_limit): expire what is due,
        and tell observers of the warm sessions the C lane recorded since the last tick."""
        if self.warm is not None:
            self.warm.watch.drain()
        self.pool.tick()
        limit = self.config.client_idle_limit
        factory = self.factory
        clients = factory.clients if limit > 0 else factory.own_idle_limits
        if clients:
            now = self.reactor.seconds()
            for client in list(clients):
                client.idle_tick(now, limit)

    # -- systemd: only a process the pooler owns (handle_signals) speaks to it ----

    def _notify(self, *states: str) -> None:
        if self.handle_signals:
            systemd.notify(*states)

    def _notify_reloading(self) -> None:
        if self.handle_signals:
            systemd.reloading()

    # -- signals -----------------------------------------------------------------

    def _install_signals(self, only: tuple[int, ...] = ()) -> None:
        actions = {
            signal.SIGHUP: self.reload,
            signal.SIGTERM: lambda: self.shutdown(SMART),
            signal.SIGINT: lambda: self.shutdown(FAST),
            signal.SIGQUIT: lambda: self.shutdown(IMMEDIATE),
            signal.SIGUSR1: self.close_idle,
            signal.SIGUSR2: self.drain,
        }
        for number, action in actions.items():
            if not only or number in only:
                signal.signal(number, self._handler(action))

    def _handler(self, action: Any) -> Any:
        def handle(number: int, frame: Any) -> None:
            self.reactor.callFromThread(action)

        return handle

    # -- operations --------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: re-read pgpool.conf; a bad file keeps the running configuration.

        Settings that only a restart can change keep their running value and are named;
        the rest apply to new sessions (and to pooled connections where they are read at
        each tick, like connection_life_time).  Warnings the running file already gave are
        not repeated; the settings that changed are named, never their values.
        """
        path = self.config.path
        if path is None:
            log.warn("reload: this service was not built from a file; nothing to reload")
            return False
        self._notify_reloading()
        try:
            new = dataclasses.replace(load_config(path), **self.overrides)
            auth_files = load_auth_files(new)
            tls = load_tls(new)
        except (ConfigError, AuthFilesError, TLSConfigError) as e:
            log.error("reload failed, keeping the running configuration: {error}", error=str(e))
            self._notify("READY=1")
            return False
        plan = plan_reload(self.config, new)
        for name in plan.restart:
            log.warn(
                "reload: {name} changed; it takes effect only after a restart "
                "(the running value is kept)",
                name=name,
            )
        if plan.changed:
            log.info("reload: changed: {names}", names=", ".join(plan.changed))
        for warning in settings_report(plan.config, self.config) + list(auth_files.warnings):
            log.warn("{line}", line=warning)
        self.factory.auth_files = auth_files
        self.factory.tls = tls
        self.apply(plan.config)
        self._load_pcp_users()
        if self.shutting_down is None:
            try:
                self._listen_pcp()  # pcp.conf may have appeared
            except Exception as e:
                log.error("PCP: {error}", error=str(e))
        log.info("configuration reloaded from {path}", path=path)
        self._notify("READY=1")
        return True

    def apply(self, config: Config) -> None:
        """Use ``config`` from now on (listeners and backends stay as they are)."""
        ticker_changed = config.client_idle_limit != self.config.client_idle_limit
        self.config = config
        self.pool.config = config
        set_keepalives(
            config.tcp_keepalives_idle, config.tcp_keepalives_interval, config.tcp_keepalives_count
        )
        self.factory.use(config)
        self._start_sr_check(hold=False)
        self.health_check.apply()
        if self.warm is not None:
            self.warm.apply()
        self.pool.admit_waiting()
        if ticker_changed and self._ticker is not None and self._ticker.running:
            self._start_ticker()

    def pause(self, database: Optional[str] = None) -> defer.Deferred[None]:
        """The console's PAUSE [db]: sessions of ``database`` (None: every one) get no
        server until ``resume`` (``SessionContext.pause_sessions``); fires once none of its
        server connections is left (session mode: when their clients have left;
        transaction mode: at the end of the transactions under way)."""
        self.factory.pause_sessions(database)
        return self._when(lambda: not self._servers_of(database))

    def resume(self, database: Optional[str] = None) -> Optional[str]:
        """RESUME [db]: what PAUSE held carries on; why it cannot, or None."""
        return self.factory.resume_sessions(database)

    def wait_close(self, database: Optional[str] = None) -> defer.Deferred[None]:
        """The console's WAIT_CLOSE [db]: fires once the servers RECONNECT (or a node's
        change) marked to close are closed."""
        return self._when(lambda: not any(s.stale for s in self._servers_of(database)))

    def _servers_of(self, database: Optional[str]) -> list[Any]:
        return [
            server
            for server in self.factory.servers.live
            if database is None or server.startup.database == database
        ]

    def _when(self, done: Any) -> defer.Deferred[None]:
        """Fires when ``done()`` holds, looking every 50 ms (a stop fires it too)."""
        fired: defer.Deferred[None] = defer.Deferred()

        def look() -> None:
            self._looks.pop(fired, None)
            if done() or self._stopped is None and self.shutting_down is not None:
                fired.callback(None)
            else:
                self._looks[fired] = self.reactor.callLater(0.05, look)

        look()
        return fired

    def close_idle(self) -> int:
        """SIGUSR1: close idle pooled server connections (pgpool-II's close_idle_connection)."""
        closed = self.pool.close_idle()
        log.info("closed {count} idle server connections", count=closed)
        return closed

    def drain(self) -> defer.Deferred[None]:
        """SIGUSR2, the console's SHUTDOWN WAIT_FOR_SERVERS: a rolling restart's drain.

        Listeners close (connections already in their backlog are taken first, so
        another pooler on the same port, ``so_reuseport``, gets every new one), each
        client ends with FATAL 57P01 at its next transaction boundary (``Session.drain``),
        and the service stops when none is left but console logins; after
        ``drain_timeout`` it shuts down fast.  Fires when stopped."""
        return self.shutdown(DRAIN)

    def shutdown(self, mode: str = FAST) -> defer.Deferred[None]:
        """Shut down smart, drain, fast or immediate, then stop the reactor when signals
        are ours.

        A later, harder mode overrides an earlier one (SIGINT during a smart wait).
        """
        if self.shutting_down is not None and self._stopped is None:
            return defer.succeed(None)  # a shutdown already finished
        if _ORDER.index(mode) <= _ORDER.index(self.shutting_down):
            return self._stopped if self._stopped is not None else defer.succeed(None)
        first = self.shutting_down is None
        self.shutting_down = mode
        if first:
            self._notify("STOPPING=1")
            log.info("{mode} shutdown", mode=mode)
            self._stop_listening(gently=mode == DRAIN)
            self._stop_sr_check()
            self.health_check.stop()
            self.failover.stop()
            self._stopped = defer.Deferred()
        stopped = self._stopped
        assert stopped is not None
        if mode == SMART:
            for client in list(self.factory.clients):
                client.refuse_waiting()
            wait = self.config.smart_shutdown_timeout
            self._fast_when_clients_gone(wait)
        elif mode == DRAIN:
            self.factory.draining = True
            for client in list(self.factory.clients):
                client.drain()
            self._fast_when_clients_gone(self.config.drain_timeout)
        elif mode == FAST:
            self.pool.close_all()
            for client in list(self.factory.clients):
                client.shut_down()
            self._when_all_closed(CLOSE_WAIT)
        else:
            self.pool.close_all()
            for server in list(self.factory.servers.live):
                server.terminate()
            for connection in self._connections():
                connection.transport.abortConnection()
            self._when_all_closed(0)
        return stopped

    def _stop_listening(self, gently: bool = False) -> None:
        """Accept no more; ``gently`` (a drain): logins under way go on, and what waits
        in a listener's backlog is accepted before it closes (closing would reset it)."""
        if self.warm is not None:
            self.warm.stop(drop_pending=not gently)
        if gently:
            for listening in self.ports:
                accept_backlog(listening)
        self._port_stops = [defer.maybeDeferred(p.stopListening) for p in self.ports]
        self.ports = []

    def _connections(self) -> list[Any]:
        return list(self.factory.clients) + list(self.factory.servers.live)

    def _fast_when_clients_gone(self, within: float) -> None:
        """Smart shutdown's and a drain's wait: go fast once no client is left (a drain
        leaves console logins to the end), or after ``within``."""
        deadline = self.reactor.seconds() + within if within > 0 else None
        mode = self.shutting_down
        setting = "drain_timeout" if mode == DRAIN else "smart_shutdown_timeout"

        def left() -> bool:
            if mode == DRAIN:
                return any(not client.is_console for client in self.factory.clients)
            return bool(self.factory.clients)

        def check() -> None:
            if self.shutting_down != mode:
                return
            if deadline is not None and self.reactor.seconds() >= deadline:
                log.warn("{setting} reached: shutting down fast", setting=setting)
            elif left():
                self._wait_call = self.reactor.callLater(0.05, check)
                return
            self.shutdown(FAST)  # fast closes the pool, and whatever client is left

        if mode == DRAIN:
            # A turn first: the console's SHUTDOWN WAIT_FOR_SERVERS is answered before
            # the console itself is closed.
            self._wait_call = self.reactor.callLater(0, check)
        else:
            check()

    def _when_all_closed(self, within: float) -> None:
        deadline = self.reactor.seconds() + within
        mode = self.shutting_down

        def check() -> None:
            if self.shutting_down != mode:
                return  # a harder mode took over
            left = self._connections()
            if not left:
                self._finished()
                return
            if self.reactor.seconds() >= deadline:
                for connection in left:
                    connection.transport.abortConnection()
            self.reactor.callLater(0.02, check)

        check()

    def _finished(self) -> None:
        wait, self._wait_call = self._wait_call, None
        if wait is not None and wait.active():
            wait.cancel()  # a smart or drain wait a harder mode overtook
        looks, self._looks = self._looks, {}
        for fired, call in looks.items():
            call.cancel()
            fired.callback(None)  # the console that asked is closed by now
        # The tick ran until now: client_idle_limit and the life times still apply
        # while a smart shutdown waits.
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        self.pool.stop_timers()
        self.factory.stop_timers()
        if self.warm is not None:
            self.warm.stop_timers()
        stopped, self._stopped = self._stopped, None
        ports, self._port_stops = self._port_stops, []
        ports += [defer.maybeDeferred(p.stopListening) for p in self.metrics_ports]
        self.metrics_ports = []
        ports += [defer.maybeDeferred(p.stopListening) for p in self.pcp_ports]
        self.pcp_ports = []
        ports.append(self.pcp.closed(self.reactor, CLOSE_WAIT))

        def done(_: object) -> None:
            if stopped is not None:
                stopped.callback(None)
            if self.handle_signals and self.reactor.running:
                self.reactor.stop()

        defer.DeferredList(ports).addCallback(done)

    def stopService(self) -> defer.Deferred[Any]:
        """Stopping the service is a fast shutdown (unless one is already under way)."""
        done = self.shutdown(FAST) if self.shutting_down != IMMEDIATE else self._stopped
        waits: list[defer.Deferred[Any]] = [defer.maybeDeferred(super().stopService)]
        if done is not None:
            waits.append(done)
        return defer.DeferredList(waits)
