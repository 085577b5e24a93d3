"""The rows the PCP port answers with, as pgpool-II's programs print them.

Each function turns one thing pgpool-tw knows (a node of the stats snapshot, its health
check counters, a client session, the running configuration) into the text fields of one
pgpool-II record, in its order: BackendInfo for pcp_node_info, POOL_HEALTH_CHECK_STATS,
POOL_REPORT_POOLS for pcp_proc_info (a process is a client session here), and name/value/
description rows for pcp_pool_status, passwords hidden.  Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from pgpool_tw.admin.snapshot import ClientRow, NodeStats
from pgpool_tw.config.settings import Config, value_text

__all__ = ["RAND_MAX", "config_rows", "health_row", "node_row", "process_row", "when"]

#: libpcp divides the weight it gets by RAND_MAX (pgpool-II keeps weights scaled by it).
RAND_MAX = 2147483647
_STATUS_NUMBERS = {"unused": 0, "waiting": 1, "up": 2, "down": 3}
_ROLE_NUMBERS = {"main": 0, "replica": 1, "primary": 2, "standby": 3}
_HIDDEN = "********"


def when(seconds: Optional[float]) -> str:
    """A moment as pgpool-II prints one (local time), or '' for never."""
    if not seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _role_number(node: NodeStats, streaming: bool) -> int:
    number = _ROLE_NUMBERS.get(node.role)
    if number is None:  # not checked yet
        return _ROLE_NUMBERS["standby" if streaming else "replica"]
    return number


def node_row(node: NodeStats, total: float, streaming: bool) -> list[str]:
    return [
        node.host,
        str(node.port),
        str(_STATUS_NUMBERS.get(node.status, 1)),
        "0",  # quarantine: no watchdog, no quarantine
        node.pg_status,
        f"{node.weight / total * RAND_MAX:f}",
        str(_role_number(node, streaming)),
        node.pg_role,
        str(node.delay_bytes or 0),
        node.replication_state,
        node.replication_sync_state,
        str(int(node.last_status_change)),
    ]


def health_row(node: NodeStats, stats: Any, period: float, streaming: bool) -> list[str]:
    role = "primary" if node.role == "primary" else "standby"
    if not streaming:
        role = "main" if node.role == "main" else "replica"
    total = success = fail = skip = retries = max_retries = 0
    max_ms = min_ms = 0
    average_retries = average_ms = 0.0
    last = last_ok = last_skip = last_failed = 0.0
    if stats is not None:
        total, success, fail = stats.total_count, stats.success_count, stats.fail_count
        skip, retries, max_retries = stats.skip_count, stats.retry_count, stats.max_retry_count
        max_ms, min_ms = int(stats.max_duration * 1000), int(stats.min_duration * 1000)
        checked = total - skip
        if period > 0 and checked > 0:
            average_retries = retries / checked
            average_ms = stats.total_duration * 1000 / checked
        last, last_ok = stats.last_health_check, stats.last_successful_health_check
        last_skip, last_failed = stats.last_skip_health_check, stats.last_failed_health_check
    return [
        str(node.index),
        node.host,
        str(node.port),
        node.status,
        role,
        when(node.last_status_change),
        str(total),
        str(success),
        str(fail),
        str(skip),
        str(retries),
        f"{average_retries:f}",
        str(max_retries),
        str(max_ms),
        str(min_ms),
        f"{average_ms:f}",
        when(last),
        when(last_ok),
        when(last_skip),
        when(last_failed),
    ]


def process_row(client: ClientRow) -> list[str]:
    """pgpool-II's POOL_REPORT_POOLS for one session, with the server it holds now."""
    connected = when(client.connected_at)
    held = client.server_pid != 0
    return [
        str(client.id),  # pool_pid: the session id
        connected,  # process_start_time
        "1",  # client_connection_count
        "0",  # pool_id
        str(client.node) if held else "0",  # backend_id
        client.database,
        client.user,
        when(client.server_created),  # backend_connection_time
        connected,  # client_connection_time
        "",  # client_disconnection_time
        "0",  # client_idle_duration
        "3",  # pool_majorversion
        "0",  # pool_minorversion
        "1",  # pool_counter
        str(client.server_pid),  # pool_backendpid
        "1" if held else "0",  # pool_connected
        client.state,
    ]


def config_rows(config: Config) -> list[tuple[str, str, str]]:
    """pcp_pool_status: every setting with its running value; passwords never shown."""
    rows: list[tuple[str, str, str]] = []
    for field in dataclasses.fields(Config):
        name = field.name
        if name in ("path", "warnings", "given", "health_check_nodes"):
            continue
        value = getattr(config, name)
        if name == "backends":
            for node in value:
                for key, text in (
                    ("backend_hostname", node.hostname),
                    ("backend_port", str(node.port)),
                    ("backend_weight", f"{node.weight:g}"),
                    ("backend_data_directory", node.data_directory),
                    ("backend_flag", node.flag),
                    ("backend_application_name", node.application_name),
                ):
                    rows.append((f"{key}{node.index}", text, f"{key} of node {node.index}"))
        elif name == "health_check":
            for sub in dataclasses.fields(value):
                key = sub.name if sub.name == "connect_timeout" else f"health_check_{sub.name}"
                text = _HIDDEN if sub.name == "password" else value_text(getattr(value, sub.name))
                rows.append((key, text, "health check of every node"))
        elif dataclasses.is_dataclass(value):
            continue  # derived objects (TLS, routing tables) are not settings
        else:
            text = _HIDDEN if "password" in name and value else value_text(value)
            rows.append((name, text, ""))
    return rows
