"""pgpool-II's SHOW pool_* answers, read from what the service already keeps.

A pgpool-II *process* serves one client at a time; pgpool-tw has one process and a
session per client, so ``pool_pid`` is the client's connection number (the admin
console's SHOW CLIENTS ``id``, KILL_CLIENT's argument), ``start_time`` when that client
connected, and each client row carries the server it holds at the moment.  Columns are
pgpool-II 4.x's, in its order, so scripts written for pgpool-II read them; where
pgpool-tw keeps no such count (pool_backend_stats' per-kind counts), the value is NULL,
never an invented 0.  ``SHOW pool_nodes`` needs the asking session and is answered in
``session/context.py``; ``SHOW pool_cache``: no query cache, refused.

Taken only when a client asks: nothing here touches a hot path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable, Optional

from pgpool_tw import __version__
from pgpool_tw.admin.pcp_rows import config_rows, health_row, process_row, when
from pgpool_tw.admin.snapshot import ClientRow, NodeStats, ServerRow, Snapshot, split_address
from pgpool_tw.checks.health import HealthStats
from pgpool_tw.config.settings import STREAMING_REPLICATION, Config

__all__ = ["PgpoolReports"]

Rows = tuple[Sequence[str], list[list[Optional[str]]]]

PROCESSES_COLUMNS = (
    "pool_pid",
    "start_time",
    "client_connection_count",
    "database",
    "username",
    "backend_connection_time",
    "pool_counter",
    "status",
)
POOLS_COLUMNS = (
    "pool_pid",
    "start_time",
    "client_connection_count",
    "pool_id",
    "backend_id",
    "database",
    "username",
    "backend_connection_time",
    "client_connection_time",
    "client_disconnection_time",
    "client_idle_duration",
    "majorversion",
    "minorversion",
    "pool_counter",
    "pool_backendpid",
    "pool_connected",
    "status",
    "load_balance_node",
    "client_host",
    "client_port",
    "statement",
)
BACKEND_STATS_COLUMNS = (
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "select_cnt",
    "insert_cnt",
    "update_cnt",
    "delete_cnt",
    "ddl_cnt",
    "other_cnt",
    "panic_cnt",
    "fatal_cnt",
    "error_cnt",
)
HEALTH_CHECK_COLUMNS = (
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "last_status_change",
    "total_count",
    "success_count",
    "fail_count",
    "skip_count",
    "retry_count",
    "average_retry_count",
    "max_retry_count",
    "max_duration",
    "min_duration",
    "average_duration",
    "last_health_check",
    "last_successful_health_check",
    "last_skip_health_check",
    "last_failed_health_check",
)

#: pgpool-II's status words for a process, by what the client's server does.
_STATUS = {
    "": "Wait for connection",
    "idle": "Idle",
    "idle in transaction": "Idle in transaction",
    "active": "Execute command",
}


class PgpoolReports:
    """``session.context.PoolReports`` for the service (``service.py`` builds it)."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        config: Callable[[], Config],
        connections: Callable[[], tuple[list[ClientRow], list[ServerRow]]],
        health: Callable[[], Mapping[int, HealthStats]],
    ) -> None:
        self.snapshot = snapshot
        self.config = config
        self.connections = connections
        self.health = health

    def rows(self, name: str) -> Optional[Rows]:
        if name == "pool_version":
            return ("pool_version",), [[f"{__version__} (pgpool-tw)"]]
        if name == "pool_status":  # pcp_pool_status's rows: passwords hidden
            return ("item", "value", "description"), [
                list(row) for row in config_rows(self.config())
            ]
        if name == "pool_processes":
            return PROCESSES_COLUMNS, [_process(client) for client in self.connections()[0]]
        if name == "pool_pools":
            return self._pools()
        if name == "pool_backend_stats":
            return BACKEND_STATS_COLUMNS, [_backend_stats(n) for n in self.snapshot().nodes]
        if name == "pool_health_check_stats":
            return self._health_check_stats()
        return None

    def _pools(self) -> Rows:
        """One row per client (with the server it holds, if any), then one per pooled
        server no client holds (``pool_pid`` NULL, status ``Idle``)."""
        clients, servers = self.connections()
        held = {client.server_pid for client in clients if client.server_pid}
        rows = [_pool_client(client) for client in clients]
        for server in servers:
            if server.pid not in held and server.state == "idle":
                rows.append(_pool_server(server))
        return POOLS_COLUMNS, rows

    def _health_check_stats(self) -> Rows:
        """pcp_health_check_stats' fields, one row per node."""
        config, stats = self.config(), self.health()
        streaming = config.clustering_mode == STREAMING_REPLICATION
        rows: list[list[Optional[str]]] = []
        for node in self.snapshot().nodes:
            period = config.health_check_for(node.index).period
            rows.append(list(health_row(node, stats.get(node.index), period, streaming)))
        return HEALTH_CHECK_COLUMNS, rows


def _backend_stats(node: NodeStats) -> list[Optional[str]]:
    # Only reads routed to a node are counted; the other kinds are not kept: NULL.
    head = [str(node.index), node.host, str(node.port), node.status, node.role]
    return [*head, str(node.select_count), *([None] * 8)]


def _process(client: ClientRow) -> list[Optional[str]]:
    return [
        str(client.id),
        when(client.connected_at),
        "1",
        client.database,
        client.user,
        when(client.server_created),
        "1",
        _STATUS.get(client.activity, client.activity),
    ]


def _pool_client(client: ClientRow) -> list[Optional[str]]:
    """pcp_proc_info's fields for the session, then SHOW pool_pools' own: pgpool-II's
    status words, load_balance_node, the client's host and port, statement."""
    host, port = split_address(client.address)
    row: list[Optional[str]] = list(process_row(client)[:16])
    return [*row, _STATUS.get(client.activity, client.activity), "0", host, port or "", ""]


def _pool_server(server: ServerRow) -> list[Optional[str]]:
    created = when(server.created)
    head = [None, "", "0", "0", str(server.node), server.database, server.user, created]
    return head + ["", "", "0", "3", "0", "1", str(server.pid), "1", "Idle", "0", "", "", ""]
