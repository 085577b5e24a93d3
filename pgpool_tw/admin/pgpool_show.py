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

import time
from collections.abc import Mapping, Sequence
from typing import Callable, Optional

from pgpool_tw import __version__
from pgpool_tw.admin.snapshot import ClientRow, NodeStats, ServerRow, Snapshot
from pgpool_tw.checks.health import HealthStats
from pgpool_tw.config.settings import Config, setting_items

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
        status_changes: Callable[[], Mapping[int, float]],
    ) -> None:
        self.snapshot = snapshot
        self.config = config
        self.connections = connections
        self.health = health
        #: Node index -> when its status last changed (the epoch; 0: never).
        self.status_changes = status_changes

    def rows(self, name: str) -> Optional[Rows]:
        if name == "pool_version":
            return ("pool_version",), [[f"{__version__} (pgpool-tw)"]]
        if name == "pool_status":
            items = setting_items(self.config())
            return ("item", "value", "description"), [list(item) for item in items]
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
        stats, changes = self.health(), self.status_changes()
        rows = []
        for node in self.snapshot().nodes:
            s = stats.get(node.index, HealthStats())
            done = s.success_count + s.fail_count
            rows.append(
                [
                    *_node_head(node),
                    _when(changes.get(node.index, 0.0)),
                    str(s.total_count),
                    str(s.success_count),
                    str(s.fail_count),
                    str(s.skip_count),
                    str(s.retry_count),
                    f"{s.retry_count / done if done else 0.0:f}",
                    str(s.max_retry_count),
                    str(round(s.max_duration * 1000)),
                    str(round(s.min_duration * 1000)),
                    f"{s.total_duration * 1000 / done if done else 0.0:f}",
                    _when(s.last_health_check),
                    _when(s.last_successful_health_check),
                    _when(s.last_skip_health_check),
                    _when(s.last_failed_health_check),
                ]
            )
        return HEALTH_CHECK_COLUMNS, rows


def _when(seconds: float) -> str:
    """A moment as pgpool-II prints one (local time), or '' for never."""
    if not seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _node_head(node: NodeStats) -> list[Optional[str]]:
    return [str(node.index), node.host, str(node.port), node.status, node.role]


def _backend_stats(node: NodeStats) -> list[Optional[str]]:
    # Only reads routed to a node are counted; the other kinds are not kept: NULL.
    return [*_node_head(node), str(node.select_count), *([None] * 8)]


def _process(client: ClientRow) -> list[Optional[str]]:
    return [
        str(client.id),
        _when(client.connected_at),
        "1",
        client.database,
        client.user,
        _when(client.server_created),
        "1",
        _STATUS.get(client.activity, client.activity),
    ]


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return (host, port) if host else (address, "")


def _pool_client(client: ClientRow) -> list[Optional[str]]:
    host, port = _split(client.address)
    has_server = client.server_pid != 0
    return [
        str(client.id),
        _when(client.connected_at),
        "1",
        "0",
        str(client.node) if has_server else "0",
        client.database,
        client.user,
        _when(client.server_created),
        _when(client.connected_at),
        "",
        "0",
        "3",
        "0",
        "1",
        str(client.server_pid),
        "1" if has_server else "0",
        _STATUS.get(client.activity, client.activity),
        "0",
        host,
        port,
        "",
    ]


def _pool_server(server: ServerRow) -> list[Optional[str]]:
    return [
        None,
        "",
        "0",
        "0",
        str(server.node),
        server.database,
        server.user,
        _when(server.created),
        "",
        "",
        "0",
        "3",
        "0",
        "1",
        str(server.pid),
        "1",
        "Idle",
        "0",
        "",
        "",
        "",
    ]
