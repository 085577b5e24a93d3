"""One stats snapshot: clients, servers, waits and per-pool counters, built on demand.

``PgpoolService.snapshot()`` builds it; the admin console, metrics and embedding
code read it and nothing else.  Building one walks the open connections once
and harvests the session trackers' counters (``stats/counters.py``); the relay
never does anything for it, so taking none costs nothing.

Meanings, after PgBouncer's SHOW POOLS and SHOW STATS:

* ``clients``: client connections by state.  ``startup`` covers clients whose
  startup packet is not read yet, the warm lane's pending ones included;
  ``active`` covers relayed sessions, warm ones included (``Lane.active``).
* ``servers``: per pool key and node index, server connections by state:
  ``login`` (connecting and logging in), ``ready`` (logged in, not yet handed
  out), ``active`` (relaying for a client), ``running`` (the pooler's own
  queries: reset, SET application_name), ``idle`` (pooled), ``closed``.
* ``waiting`` / ``max_wait``: clients waiting for a client slot
  (num_init_children) or, in transaction pooling, for a server for their next
  transaction (PgBouncer's cl_waiting), and the longest wait so far in seconds.
* ``pinned``: transaction-mode clients that keep their server between transactions,
  each with its reasons (``cluster/session_state.py``: set, listen, advisory_lock,
  temp_table, hold_cursor, role, load, prepared, named_statement, unparsed); per pool,
  their count.
* ``nodes``: each backend node as the cluster sees it (pgpool-II's SHOW pool_nodes):
  status (up, down, waiting, unused), role, what PostgreSQL says it is, its
  load-balancing weight, its replication delay, reads sent to it since the start.
* counters, totals since the start: ``logins`` (sessions that got a server
  connection), ``queries`` and ``xacts`` (counted at the ReadyForQuery that ends
  them: see ``protocol.relay``), ``bytes_in`` / ``bytes_out`` (relayed from and to
  clients after the login), ``wait_time`` (seconds admitted clients waited).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

from pgpool_tw.lane.warm import WarmLane
from pgpool_tw.pool import backend
from pgpool_tw.pool.key import PoolKey
from pgpool_tw.pool.pool import Pool
from pgpool_tw.protocol import messages as m
from pgpool_tw.session.frontend import FrontendFactory
from pgpool_tw.session.states import STATE_NAMES as _CLIENT_STATES
from pgpool_tw.stats.counters import Counters, Totals

CLIENT_STATES = tuple(_CLIENT_STATES.values())

_SERVER_STATES = {
    backend.NEGOTIATING: "login",
    backend.CONNECTING: "login",
    backend.STARTUP: "login",
    backend.LOGIN: "login",
    backend.READY: "ready",
    backend.ATTACHED: "active",
    backend.RUNNING: "running",
    backend.IDLE: "idle",
    backend.CLOSED: "closed",
}
SERVER_STATES = ("login", "ready", "active", "running", "idle", "closed")


@dataclass(frozen=True)
class PoolStats:
    """One pool key: a user, a database and the startup options they share."""

    key: Hashable
    user: str
    database: str
    clients: Mapping[str, int]
    waiting: int
    max_wait: float
    #: node index -> server state -> count
    servers: Mapping[int, Mapping[str, int]]
    logins: int
    xacts: int
    queries: int
    bytes_in: int
    bytes_out: int
    wait_time: float
    #: Transaction-mode clients of this pool pinned to their server.
    pinned: int = 0
    #: The node its servers are on (the pool key's; -1: a key without one).
    node: int = -1
    #: Waits by log2 bucket of microseconds (``stats/counters.py``); query time (server
    #: busy periods) in seconds and by bucket.
    wait_hist: tuple[int, ...] = ()
    query_time: float = 0.0
    query_hist: tuple[int, ...] = ()


@dataclass(frozen=True)
class PinnedClient:
    """A transaction-mode client that keeps its server, and why."""

    client: str
    user: str
    database: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class NodeStats:
    """One backend node (``cluster/cluster.py``'s ``Node``) at the snapshot's moment."""

    index: int
    host: str
    port: int
    status: str
    role: str
    pg_role: str
    weight: float
    #: Behind the primary in WAL bytes and in seconds; None: not measured.
    delay_bytes: Optional[int]
    delay_seconds: Optional[float]
    lagging: bool
    select_count: int
    #: What the server said (up, down, unknown), pg_stat_replication's words for a
    #: standby, and when role or status last changed (epoch seconds): pcp_node_info's.
    pg_status: str = "unknown"
    replication_state: str = ""
    replication_sync_state: str = ""
    last_status_change: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """The whole pooler at one moment (``taken_at``, the reactor's clock)."""

    taken_at: float
    clients: Mapping[str, int]
    waiting: int
    max_wait: float
    pools: Mapping[Hashable, PoolStats]
    pinned: tuple[PinnedClient, ...] = ()
    nodes: tuple[NodeStats, ...] = ()
    #: Clients not authenticated yet (``preauth``, the lane's pending ones included), and
    #: the totals of those closed for the cap, at the timeout, to make room on a full
    #: server, and of failed logins (session/preauth.py).
    preauth: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def pools_of(self, user: str, database: str) -> list[PoolStats]:
        """The pools of a user and database (one per distinct startup options)."""
        return [p for p in self.pools.values() if (p.user, p.database) == (user, database)]


@dataclass(frozen=True)
class ClientRow:
    """One client connection (SHOW CLIENTS, SHOW pool_processes, pcp_proc_info); a
    warm-lane session (logged in and relayed by the C loop alone) has id 0, no address
    and no connect time: only its server is known to Python."""

    user: str
    database: str
    state: str
    address: str
    connected_at: float
    tls: bool
    application_name: str
    pinned: tuple[str, ...]
    id: int = 0
    #: The server the client holds now (pid, node index, when it was opened; 0, -1, 0.0
    #: for none) and what it does: idle, idle in transaction, active, or "" (no server).
    server_pid: int = 0
    node: int = -1
    server_created: float = 0.0
    activity: str = ""


@dataclass(frozen=True)
class ServerRow:
    """One server connection (SHOW SERVERS)."""

    user: str
    database: str
    state: str
    node: int
    address: str
    pid: int
    created: float
    application_name: str


def split_address(address: str) -> tuple[str, Optional[str]]:
    """A connection's ``host:port`` as its host and port columns (the console's addr and
    port, pool_pools' client_host and client_port); ``local`` has no port."""
    host, sep, port = address.rpartition(":")
    return (host, port) if sep else (address, None)


def take_connections(
    factory: FrontendFactory, pool: Pool, warm: Optional[WarmLane] = None
) -> tuple[list[ClientRow], list[ServerRow]]:
    """Every client and server connection, one row each: walked only when asked (the
    console's SHOW CLIENTS and SHOW SERVERS), never for the snapshot."""
    clients = []
    for client in factory.clients:
        startup = client.startup
        server = client.serving
        clients.append(
            ClientRow(
                startup.user if startup is not None else "",
                startup.database if startup is not None else "",
                _CLIENT_STATES.get(client.state, str(client.state)),
                client.peer,
                client.connected_at,
                client.ssl,
                startup.application_name if startup is not None else "",
                tuple(client.pinned),
                client.id,
                server.pid if server is not None else 0,
                server.node.index if server is not None else -1,
                server.created if server is not None else 0.0,
                _activity(client.tracker) if server is not None else "",
            )
        )
    if warm is not None:  # sessions the C loop logged in and relays alone
        for server, tracker in warm.watch.active():
            startup = server.startup
            clients.append(
                ClientRow(
                    startup.user,
                    startup.database,
                    "active",
                    "",
                    0.0,
                    False,
                    server.params.get("application_name", ""),
                    (),
                    0,
                    server.pid,
                    server.node.index,
                    server.created,
                    _activity(tracker),
                )
            )
    states = pool.leases.busy_on_lanes()
    if warm is not None:
        states.update(warm.watch.server_states())
    servers = []
    for server in factory.servers.live:
        servers.append(
            ServerRow(
                server.startup.user,
                server.startup.database,
                states.get(server) or _SERVER_STATES.get(server.state, str(server.state)),
                server.node.index,
                server.node.address,
                server.pid,
                server.created,
                server.params.get("application_name", ""),
            )
        )
    return clients, servers


def _activity(tracker: Any) -> str:
    """What a client's server does, read from its session's tracker (pgpool-II's
    pool_processes status words, lower case)."""
    if tracker is None:
        return ""
    if tracker.pending:
        return "active"
    return "idle in transaction" if tracker.status != m.IDLE else "idle"


def take_snapshot(
    now: float, factory: FrontendFactory, pool: Pool, warm: Optional[WarmLane] = None
) -> Snapshot:
    """Build a snapshot of the sessions ``factory`` serves, its ``pool`` and warm lane."""
    book = factory.servers
    for server in book.live:
        book.harvest(server)
    if warm is not None:
        warm.watch.harvest()
    pool.leases.harvest()
    clients, by_key = _clients(factory.clients, warm)
    states = pool.leases.busy_on_lanes()
    if warm is not None:
        states.update(warm.watch.server_states())
    servers = _servers(book.live, states)
    waits = pool.waiting_by_key()
    for key, leased in pool.leases.stats().items():
        if leased.waiting:
            count, longest = waits.get(key, (0, 0.0))
            waits[key] = (count + leased.waiting, max(longest, leased.max_wait))
    totals = _merged(book.totals, pool.totals)
    pinned = _pinned(factory.clients)
    pinned_by_key: dict[Hashable, int] = {}
    for key, _ in pinned:
        pinned_by_key[key] = pinned_by_key.get(key, 0) + 1
    keys = set(by_key) | set(servers) | set(waits) | set(totals)
    pools = {key: _pool(key, by_key, servers, waits, totals, pinned_by_key) for key in keys}
    return Snapshot(
        taken_at=now,
        clients=MappingProxyType(clients),
        waiting=sum(count for count, _ in waits.values()),
        max_wait=max((longest for _, longest in waits.values()), default=0.0),
        pools=MappingProxyType(pools),
        pinned=tuple(client for _, client in pinned),
        nodes=_nodes(factory),
        preauth=MappingProxyType(factory.preauth.counts()),
    )


def _nodes(factory: FrontendFactory) -> tuple[NodeStats, ...]:
    counts = factory.select_counts
    return tuple(
        NodeStats(
            node.index,
            node.backend.hostname,
            node.backend.port,
            node.status,
            node.role,
            node.pg_role,
            node.weight,
            node.delay_bytes,
            node.delay_seconds,
            node.lagging,
            counts.get(node.index, 0),
            node.pg_status,
            node.replication_state,
            node.replication_sync_state,
            node.last_status_change,
        )
        for node in factory.cluster
    )


def _pinned(connections: Iterable[Any]) -> list[tuple[Hashable, PinnedClient]]:
    out = []
    for client in connections:
        reasons = client.pinned
        if reasons:
            key = client.key
            out.append((key, PinnedClient(client.peer, key.user, key.database, tuple(reasons))))
    return out


def _clients(
    connections: Iterable[Any], warm: Any
) -> tuple[dict[str, int], dict[Hashable, dict[str, int]]]:
    """Client connections by state, overall and by pool key (those that have one)."""
    overall = dict.fromkeys(CLIENT_STATES, 0)
    by_key: dict[Hashable, dict[str, int]] = {}
    for client in connections:
        name = _CLIENT_STATES.get(client.state, str(client.state))
        overall[name] = overall.get(name, 0) + 1
        key = getattr(client, "key", None)  # the pool key, once its startup packet is read
        if key is not None:
            states = by_key.setdefault(key, dict.fromkeys(CLIENT_STATES, 0))
            states[name] = states.get(name, 0) + 1
    if warm is not None:
        overall["active"] += warm.active
        overall["startup"] += int(warm.lane.pending)
        for key, count in warm.watch.active_by_key().items():
            by_key.setdefault(key, dict.fromkeys(CLIENT_STATES, 0))["active"] += count
    return overall, by_key


def _servers(live: Iterable[Any], lent: Mapping[Any, str]) -> dict[Hashable, dict[int, dict]]:
    """Server connections by pool key, node index and state."""
    out: dict[Hashable, dict[int, dict[str, int]]] = {}
    for server in live:
        name = lent.get(server) or _SERVER_STATES.get(server.state, str(server.state))
        nodes = out.setdefault(server.pool_key, {})
        states = nodes.setdefault(server.node.index, dict.fromkeys(SERVER_STATES, 0))
        states[name] = states.get(name, 0) + 1
    return out


def _merged(*parts: Totals) -> dict[Hashable, Counters]:
    out: dict[Hashable, Counters] = {}
    for totals in parts:
        for key, counters in totals.by_key.items():
            out.setdefault(key, Counters()).add(counters)
    return out


def _pool(
    key: Hashable,
    clients: Mapping[Hashable, dict[str, int]],
    servers: Mapping[Hashable, dict[int, dict[str, int]]],
    waits: Mapping[Hashable, tuple[int, float]],
    totals: Mapping[Hashable, Counters],
    pinned: Mapping[Hashable, int],
) -> PoolStats:
    counters = totals.get(key, Counters())
    waiting, max_wait = waits.get(key, (0, 0.0))
    nodes = servers.get(key, {})
    return PoolStats(
        key=key,
        user=key.user if isinstance(key, PoolKey) else "",
        database=key.database if isinstance(key, PoolKey) else "",
        clients=MappingProxyType(clients.get(key, dict.fromkeys(CLIENT_STATES, 0))),
        waiting=waiting,
        max_wait=max_wait,
        servers=MappingProxyType(
            {index: MappingProxyType(states) for index, states in nodes.items()}
        ),
        logins=counters.logins,
        xacts=counters.xacts,
        queries=counters.queries,
        bytes_in=counters.bytes_in,
        bytes_out=counters.bytes_out,
        wait_time=counters.wait_time,
        pinned=pinned.get(key, 0),
        node=key.node if isinstance(key, PoolKey) else -1,
        wait_hist=tuple(counters.wait_hist),
        query_time=counters.query_time,
        query_hist=tuple(counters.query_hist),
    )
