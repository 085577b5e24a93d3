"""What every client session shares: settings, the pool, keys, TLS, the way to a server.

A ``Session`` (machine.py) reads its rules from here and asks it for the few
things that need the reactor: login timers and opening a server connection.
The Twisted factory (frontend.py) is this object plus ``buildProtocol``, so the
service swaps a reloaded configuration or new TLS contexts in one place.  Must
never hold per-session state.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol

from twisted.logger import Logger

from pgpool_tw.cluster.classify import Classifier
from pgpool_tw.cluster.cluster import UP, WAITING, Cluster
from pgpool_tw.cluster.pgpool_sql import LocalCommand
from pgpool_tw.cluster.router import choose_lb_node, read_by_weight, readable, routing_on
from pgpool_tw.cluster.show import POOL_NODES_COLUMNS, pool_nodes_rows
from pgpool_tw.config.authfiles import AuthFiles
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.config.tls import TLSContexts
from pgpool_tw.engine import fastpoll
from pgpool_tw.engine.speedups import speedups
from pgpool_tw.logs.ratelimit import RateLimit
from pgpool_tw.net.deadlines import Deadlines
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.book import ServerBook
from pgpool_tw.pool.connector import connect_server
from pgpool_tw.pool.pool import Pool
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.rows import result_set
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session.cancel import CancelRegistry, Target
from pgpool_tw.session.lease import Filler
from pgpool_tw.session.logs import statements_for
from pgpool_tw.session.pause import Pause
from pgpool_tw.session.preauth import PreAuth
from pgpool_tw.session.routed import RoutedStream, RoutingRules
from pgpool_tw.session.transaction import StatementNames
from pgpool_tw.session.transaction.effects import FAST_SHAPES
from pgpool_tw.stats.events import EventHub

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import TxLane, TxServer
    from pgpool_tw.pool.backend import ServerOwner


log = Logger()


class ConsoleClient(Protocol):
    def feed(self, data: bytes) -> None: ...


class AdminConsole(Protocol):
    """The admin console as sessions see it (admin/console.py's ``ConsoleService``)."""

    def open(
        self, admin: bool, send: Callable[[bytes], None], close: Callable[[], None]
    ) -> ConsoleClient: ...


class PoolReports(Protocol):
    """pgpool-II's SHOW pool_* answers read from the stats snapshot
    (admin/pgpool_show.py's ``PgpoolReports``)."""

    def rows(self, name: str) -> Optional[tuple[Sequence[str], list[list[Optional[str]]]]]:
        """The columns and rows of ``SHOW <name>``; None: pgpool-tw has no such data."""


class WarmLogins(Protocol):
    """The C loop's warm lane as sessions see it (lane/warm.py's ``WarmLane``)."""

    def learn(self, client: Any, server: BackendProtocol) -> None: ...
    def cancel_target(self, pid: int, secret: int) -> Optional[list[Target]]: ...
    def forget(self) -> None: ...


class NodeWatch(Protocol):
    """Failover as sessions see it (checks/failover.py's ``Failover``)."""

    def backend_error(self, index: int, why: str) -> None: ...


class SessionContext:
    """The state all client sessions of one service share."""

    def __init__(
        self, config: Config, pool: Pool, reactor: Any, events: Optional[EventHub] = None
    ) -> None:
        self.config = config
        #: The backend nodes, rebuilt from each configuration the service applies.
        self.cluster = Cluster.from_config(config)
        self.pool = pool
        self.reactor = reactor
        self.events = events if events is not None else EventHub()
        #: pool_hba.conf and pool_passwd (empty while enable_pool_hba is off).
        self.auth_files = AuthFiles()
        #: TLS contexts for both sides (a reload swaps in new ones).
        self.tls = TLSContexts()
        #: Live sessions by the cancel key their client was given.
        self.cancels: CancelRegistry[Any] = CancelRegistry()
        #: Transaction pooling: the pooler's name for each prepared statement; servers
        #: min_pool_size asks for are opened here.
        self.statement_names = StatementNames()
        pool.leases.opener = self._fill
        pool.leases.make_lane = self._make_lane
        #: Open client connections, so a shutdown can wait for all of them.
        self.clients: set[Any] = set()
        self.servers = ServerBook(self.events)
        #: Every TCP port of this service set the client socket options for the
        #: clients it accepts (service.py); otherwise each client sets them.
        self.listeners_tuned = False
        #: Warm logins served by the C loop (service.py starts it under ``twistd pgpool``).
        self.warm: Optional[WarmLogins] = None
        #: The admin console (service.py sets it; None: console logins are refused).
        self.console: Optional[AdminConsole] = None
        #: Unknown-key CancelRequests: logged one a second, with a count (anyone may send
        #: them without logging in).
        self.unknown_cancels = RateLimit()
        #: When the client being adopted now was accepted, if before now (the C loop read
        #: its first bytes): set by warm.py around the adoption only.
        self.accepted_since: Optional[float] = None
        #: Clients not authenticated yet: their cap and the log of their ends.
        self.preauth = PreAuth(reactor, lambda: self.config.preauth_cap)
        #: Clients whose session set its own client_idle_limit (PGPOOL SET): the service's
        #: tick checks them even when pgpool.conf's is 0.
        self.own_idle_limits: set[Any] = set()
        #: SHOW pool_* besides pool_nodes (service.py sets it; None: refused with 0A000).
        self.reports: Optional[PoolReports] = None
        #: A drain is under way (service.py): every session, new ones included, ends at
        #: its next transaction boundary (``Session.drain``).
        self.draining = False
        #: The console's PAUSE: databases whose sessions get no server until RESUME.
        self.pause = Pause()
        self._login_deadlines: dict[float, Deadlines] = {}
        #: Reads sent to each node since start (SHOW pool_nodes' select_cnt).
        self.select_counts: dict[int, int] = {}
        #: Function names the primary's catalog says are not VOLATILE (the sr_check).
        self.read_only_functions: frozenset[str] = frozenset()
        self.classifier = _classifier(config, self.read_only_functions)
        #: Shape key -> class of statement, for the C loop's routers (engine/_route.c):
        #: one table for the process, emptied in place whenever the classifier changes.
        self.fast_shapes: dict[bytes, int] = {}
        #: The BEGIN texts the routers' tables name (RoutingRules.begins), and the
        #: tables computed so far (RoutingRules.automata).
        self.fast_begins: list[bytes] = []
        self.fast_automata: dict[Any, Any] = {}
        #: Routed sessions the C loop routes for: re-armed when the cluster changes.
        self.fast_streams: weakref.WeakSet[RoutedStream] = weakref.WeakSet()
        #: Sessions waiting for the first replication check to name the primary.
        self._held: Optional[list[Callable[[], None]]] = None
        #: Failover, told when a session's server fails (failover_on_backend_error).
        self.failover: Optional[NodeWatch] = None

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

    def use(self, config: Config) -> None:
        """A reload's configuration: new sessions read it; nodes keep their status."""
        old = self.cluster
        self.config = config
        self.classifier = _classifier(config, self.read_only_functions)
        self.fast_shapes.clear()
        self.cluster = Cluster.from_config(config)
        self.cluster.carry_over(old)
        self.routing_changed()

    def hold_sessions(self) -> None:
        """Until ``release_sessions``, admission waits: the primary is not known yet."""
        if self._held is None:
            self._held = []

    def release_sessions(self) -> None:
        held, self._held = self._held, None
        for admit in held or ():
            admit()

    def when_topology_known(self, admit: Callable[[], None]) -> bool:
        """False when ``admit`` may go on now; True when it will be called later."""
        if self._held is None:
            return False
        self._held.append(admit)
        return True

    # -- routing (cluster/router.py decides; these hand sessions its answers) ----------

    def learn_functions(self, names: frozenset[str]) -> None:
        """The catalog's non-VOLATILE function names: reads that call them may balance."""
        if names != self.read_only_functions:
            self.read_only_functions = names
            self.classifier.set_known_read_only(names)
            self.fast_shapes.clear()

    def routing_changed(self) -> None:
        """The cluster's answers changed (a replication check): sessions the C loop routes
        for re-read where their reads may go."""
        self.fast_automata.clear()
        for stream in list(self.fast_streams):
            stream.rearm()

    @property
    def routes(self) -> bool:
        """Sessions route statements between nodes (their relay reads every message)."""
        return routing_on(self.config, self.cluster)

    def lb_node_for(self, startup: StartupMessage, primary: int) -> Optional[int]:
        """The session's load-balancing node, or None when sessions do not route."""
        if not routing_on(self.config, self.cluster):
            return None
        return choose_lb_node(
            self.config,
            self.cluster,
            primary,
            startup.database,
            startup.application_name,
            startup.user,
        )

    def routing_rules(
        self, lb_node: int, primary: int, local: Callable[[LocalCommand, int], bytes]
    ) -> RoutingRules:
        """What a routed session asks while it runs, read from the current settings;
        ``local`` answers the commands the pooler answers itself (``Session.local_answer``)."""
        config = self.config

        def lb_readable() -> bool:
            return readable(self.cluster.get(lb_node))

        def lb_replayed() -> int:
            node = self.cluster.get(lb_node)
            return (node.replay_lsn or 0) if node is not None else 0

        def per_statement() -> bool:
            return read_by_weight(self.cluster, primary, lb_node)

        return RoutingRules(
            self.classifier.classify,
            local,
            lb_readable,
            lb_replayed,
            config.disable_load_balance_on_write,
            config.read_your_writes,
            self._count_select,
            statements_for(config),
            per_statement if config.statement_level_load_balance else None,
            None if config.primary_routing_query_pattern_list else self._learn,
            self.fast_begins,
            self.fast_automata,
            # Everything the rules answer besides the cluster (whose changes empty
            # fast_automata): sessions with equal keys share routers' tables.
            (
                lb_node,
                primary,
                config.disable_load_balance_on_write,
                config.read_your_writes,
                config.log_per_node_statement,
                config.log_statement,
                config.statement_level_load_balance,
            ),
        )

    def _learn(self, msg: bytes, kind: int, literals: bool) -> bool:
        """A Query of this shape may go by the C loop: its shape key gets ``kind``.

        ``literals``: texts that differ only in literals share the class; otherwise
        only a key without literals is the text's alone (a BEGIN, a COMMIT)."""
        key = fast_key(msg, literals)
        if key is None:
            return False
        shapes = self.fast_shapes
        if len(shapes) >= FAST_SHAPES_MAX and key not in shapes:
            shapes.clear()
        shapes[key] = kind
        return True

    def _count_select(self, node: int, count: int) -> None:
        counts = self.select_counts
        counts[node] = counts.get(node, 0) + count

    def show_pool(self, name: str, lb_node: Optional[int]) -> bytes:
        """pgpool-II's ``SHOW <name>`` (one of ``LOCAL_COMMANDS``), without ReadyForQuery;
        ``lb_node``: the asking session's load-balancing node (pool_nodes says it)."""
        if name == "pool_nodes":
            by_time = self.config.delay_threshold_by_time > 0
            rows = pool_nodes_rows(self.cluster, lb_node, self.select_counts, by_time)
            return result_set(POOL_NODES_COLUMNS, rows)
        found = self.reports.rows(name) if self.reports is not None else None
        if found is None:
            return m.error_response(
                "0A000", f"SHOW {name} is not supported by pgpool-tw", severity="ERROR"
            )
        return result_set(*found)

    def node_up(self, backend: BackendNode) -> None:
        """A server of ``backend`` finished a login: a waiting node is up (pgpool-II's
        status; a detached node stays down whatever logins were under way)."""
        node = self.cluster.get(backend.index)
        if node is not None and node.status == WAITING:
            self.cluster.set_status(backend.index, UP)
        self.events.backend_status(backend.address, "up")

    def server_failed(self, index: int, why: str) -> None:
        """A session's server of node ``index`` failed (refused, cut): failover judges."""
        if self.failover is not None:
            self.failover.backend_error(index, why)

    # -- failover's effects on sessions and pooled servers ------------------------------

    def node_detached(self, index: int, why: str) -> None:
        """Node ``index`` is down: sessions there end (or drop a read-only leg), no pooled
        or parked server of it is handed out again, routers re-read where reads go."""
        node = self.cluster.get(index)
        address = node.address if node is not None else "?"
        text = f"backend node {index} ({address}) was detached: {why}"
        self._retire_servers(lambda server: server.node.index == index)
        for client in list(self.clients):
            client.session.node_detached(index, text)
        self.routing_changed()

    def roles_changed(self, changed: frozenset[int]) -> None:
        """The primary changed (failover found or was told a new one): sessions whose
        writes go to another node end (57P01) so their clients reconnect to the new
        primary; servers of the nodes in ``changed`` logged in before are never pooled
        again."""
        self._retire_servers(lambda server: server.node.index in changed)
        primary = self.cluster.primary
        if primary is None:
            return
        index = primary.index
        text = f"the primary is now backend node {index} ({primary.address}): reconnect"
        for client in list(self.clients):
            session = client.session
            node = session.write_node
            if node is not None and node != index:
                session.node_detached(node, text)
        self.routing_changed()

    def _retire_servers(self, which: Callable[[BackendProtocol], bool]) -> None:
        """Servers for which ``which`` holds are closed when idle and never reused."""
        for server in list(self.servers.live):
            if which(server):
                server.stale = True
        self.pool.retire(which)

    # -- the admin console's commands -------------------------------------------------

    def kill_database(self, database: str) -> int:
        """KILL: every client of ``database`` is ended as a fast shutdown ends it (57P01)
        and its servers are closed once released (idle ones now); returns the clients."""
        killed = 0
        for client in list(self.clients):
            startup = client.startup
            if startup is not None and startup.database == database:
                client.session.shut_down()
                killed += 1
        self.reconnect(database)
        return killed

    def kill_client(self, client_id: int) -> bool:
        """KILL_CLIENT: the client numbered ``client_id`` is ended (57P01); False when no
        client has that number."""
        for client in list(self.clients):
            if client.id == client_id:
                client.session.shut_down()
                return True
        return False

    def reconnect(self, database: Optional[str] = None) -> None:
        """RECONNECT: the servers of ``database`` (every database when None) are closed
        once their clients release them, idle ones now; new ones replace them."""
        self._retire_servers(lambda server: database is None or server.startup.database == database)

    def pause_sessions(self, database: Optional[str]) -> None:
        """PAUSE [db]: no server is handed to a session of ``database`` (None: any) until
        RESUME; transaction-mode clients leave the C lane (their next transaction asks
        Python, which holds it), warm logins stop (their entries are forgotten), and the
        database's servers close as they are released (idle ones now), as RECONNECT."""
        self.pause.pause(database)
        for client in list(self.clients):
            startup = client.startup
            if startup is not None and (database is None or startup.database == database):
                client.tx_disarm()
        if self.warm is not None:
            self.warm.forget()
        self.reconnect(database)

    def resume_sessions(self, database: Optional[str]) -> Optional[str]:
        """RESUME [db]: the sessions held by PAUSE carry on; why it cannot, or None."""
        return self.pause.resume(database)

    def _fill(self, key: Any) -> None:
        """min_pool_size: open a server for ``key`` alone (session/lease.py)."""
        Filler(self, key).open()

    def _make_lane(self, on_event: Callable[[int, TxServer], None]) -> Optional[TxLane]:
        """A pool key's transaction lane on the C loop (engine/_txlane.c), if it runs."""
        return fastpoll.new_tx_lane(self.reactor, FAST_SHAPES, on_event)

    def connect(
        self,
        node: BackendNode,
        startup: StartupMessage,
        owner: ServerOwner,
        tls_override: Optional[Any] = None,
    ) -> Any:
        """Open a server connection to ``node`` that logs in for ``owner``; its connector."""
        tls = self.tls
        return connect_server(
            self.reactor,
            node,
            startup,
            owner,
            self.servers,
            tls_override if tls_override is not None else tls.for_server(node),
            tls.server_tls_required,
            # A login's own timer (session/login.py) says connect_timeout first; this
            # is the bound for the other openers (min_pool_size, load-balancing legs).
            (self.config.connect_timeout or 29) + 1,
        )


def fast_key(msg: bytes, literals: bool) -> Optional[bytes]:
    """The C loop's key for a Query message (``_shape.c``), or None: no key, or one with
    literals where ``literals`` is False (only a BEGIN's or COMMIT's own text will do)."""
    if speedups is None:
        return None
    key = speedups.shape_key(msg[5:-1])
    if key is None or (not literals and any(byte < 4 for byte in key)):
        return None  # bytes 1-3 stand for literals
    return key


#: Shapes the C loop's table holds before it starts over (a client sending ever new
#: shapes costs a Python classification each, never memory).
FAST_SHAPES_MAX = 10000


def _classifier(config: Config, known: frozenset[str]) -> Classifier:
    """The classifier for ``config``'s function and pattern lists (its cache starts empty)."""
    return Classifier(
        write_functions=config.write_function_list,
        read_only_functions=config.read_only_function_list,
        primary_patterns=config.primary_routing_query_pattern_list,
        allow_sql_comments=config.allow_sql_comments,
        known_read_only=known,
    )
