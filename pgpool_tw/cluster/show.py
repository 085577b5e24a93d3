"""SHOW pool_nodes: the nodes as pgpool-II shows them, one row of text per node.

The columns and their words are pgpool-II's (4.3 and later), so scripts written for
pgpool-II read pgpool-tw's answer: ``lb_weight`` is the node's share of the weights,
``load_balance_node`` says whether the asking session reads from that node,
``select_cnt`` counts the reads sent to it since start.  Pure.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Optional

from pgpool_tw.cluster.cluster import Cluster, Node

__all__ = ["POOL_NODES_COLUMNS", "pool_nodes_rows"]

POOL_NODES_COLUMNS = (
    "node_id",
    "hostname",
    "port",
    "status",
    "pg_status",
    "lb_weight",
    "role",
    "pg_role",
    "select_cnt",
    "load_balance_node",
    "replication_delay",
    "replication_state",
    "replication_sync_state",
    "last_status_change",
)


def _delay(node: Node, primary: Optional[Node], by_time: bool) -> str:
    if primary is not None and node.index == primary.index:
        return "0"
    if by_time:
        seconds = node.delay_seconds
        return "0" if seconds is None else f"{seconds:g} second"
    delay = node.delay_bytes
    return "0" if delay is None else str(delay)


def _changed(node: Node) -> str:
    when = node.last_status_change
    if not when:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def pool_nodes_rows(
    cluster: Cluster,
    lb_node: Optional[int],
    select_counts: Mapping[int, int],
    by_time: bool = False,
) -> list[list[Optional[str]]]:
    total = sum(node.weight for node in cluster) or 1.0
    primary = cluster.primary
    rows: list[list[Optional[str]]] = []
    for node in cluster:
        backend = node.backend
        rows.append(
            [
                str(node.index),
                backend.hostname,
                str(backend.port),
                node.status,
                node.pg_status,
                f"{node.weight / total:f}",
                node.role,
                node.pg_role,
                str(select_counts.get(node.index, 0)),
                "true" if node.index == lb_node else "false",
                _delay(node, primary, by_time),
                node.replication_state,
                node.replication_sync_state,
                _changed(node),
            ]
        )
    return rows
