"""Nodes built from the ``backend_*N`` settings, with a role and a status, and the primary.

pgpool-tw sends every session to one node today: the lowest-numbered one (node 0 in every
usual pgpool.conf), as pgpool-II's "main node".  That node's role is ``primary``.  The other
nodes' role is ``unknown``, not ``standby``: pgpool-II learns a node's role by asking the
server (pg_is_in_recovery), which pgpool-tw does not do yet, and a node the user marked
ALWAYS_PRIMARY would be wrongly called a standby.

Statuses are pgpool-II's words (SHOW POOL_NODES, pcp_node_info): every configured node starts
``waiting`` ("up, no connection yet"), as pgpool-II's nodes do at start; ``up`` once a
connection is pooled, ``down`` when detached; ``unused`` is pgpool-II's word for a slot with
no node, so no node here has it.  Nodes other than the primary stay ``waiting``: configured,
not used yet.  Until routing and failover exist, a file that names more than one node gets
one warning (:meth:`Cluster.not_used_warning`) so the user is never silently ignored.

Pure: no Twisted, no logging; the caller logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Optional

from pgpool_tw.config.report import new_warnings, unused_lines
from pgpool_tw.config.settings import BackendNode, Config

__all__ = [
    "DOWN",
    "PRIMARY",
    "STANDBY",
    "UNKNOWN",
    "UNUSED",
    "UP",
    "WAITING",
    "Cluster",
    "Node",
    "settings_report",
]

# Roles (pgpool-II's words in streaming replication mode).
PRIMARY, STANDBY, UNKNOWN = "primary", "standby", "unknown"
# Statuses (pgpool-II's words, in its order 0..3).
UNUSED, WAITING, UP, DOWN = "unused", "waiting", "up", "down"
_STATUSES = (UNUSED, WAITING, UP, DOWN)


@dataclass(frozen=True)
class Node:
    """One server as the cluster sees it: its settings, role and status."""

    backend: BackendNode
    role: str
    status: str = WAITING

    @property
    def index(self) -> int:
        return self.backend.index

    @property
    def address(self) -> str:
        return self.backend.address

    @property
    def weight(self) -> float:
        return self.backend.weight

    @property
    def flag(self) -> str:
        return self.backend.flag


class Cluster:
    """The nodes of one configuration: iterate them, look one up by N, find the primary.

    Built again from each Config a reload applies; a status set here lasts until then.
    """

    def __init__(self, nodes: tuple[Node, ...], path: str = "pgpool.conf") -> None:
        self._nodes = {node.index: node for node in nodes}
        self.path = path

    @classmethod
    def from_config(cls, config: Config) -> Cluster:
        primary = config.primary_backend
        nodes = tuple(
            Node(backend, PRIMARY if backend is primary else UNKNOWN) for backend in config.backends
        )
        return cls(nodes, config.path or "pgpool.conf")

    def __iter__(self) -> Iterator[Node]:
        return iter(sorted(self._nodes.values(), key=lambda node: node.index))

    def __len__(self) -> int:
        return len(self._nodes)

    def __getitem__(self, index: int) -> Node:
        """The node numbered ``index`` (backend_hostname<index>); KeyError if none."""
        return self._nodes[index]

    def get(self, index: int) -> Optional[Node]:
        return self._nodes.get(index)

    @property
    def primary(self) -> Optional[Node]:
        """The node writes go to: today every session's node."""
        for node in self:
            if node.role == PRIMARY:
                return node
        return None

    def set_status(self, index: int, status: str) -> None:
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}")
        self._nodes[index] = replace(self._nodes[index], status=status)

    def not_used_warning(self) -> Optional[str]:
        """One line naming the nodes pgpool-tw does not use yet, or None when all are used.

        A node marked ALWAYS_PRIMARY that is not the primary is named too, since the user
        expects writes to go there.
        """
        primary = self.primary
        others = [node for node in self if node is not primary]
        if primary is None or not others:
            return None
        listed = ", ".join(f"{node.index} ({node.address})" for node in others)
        word = "node" if len(others) == 1 else "nodes"
        line = (
            f"{self.path}: backend {word} {listed} not used yet: every session goes to "
            f"node {primary.index} ({primary.address}) until routing, load balancing and "
            "failover exist"
        )
        marked = [node.index for node in others if node.backend.always_primary]
        if marked:
            names = ", ".join(f"backend_flag{index}" for index in marked)
            line += f"; {names} ALWAYS_PRIMARY is not followed yet"
        return line


def settings_report(config: Config, running: Optional[Config] = None) -> list[str]:
    """What to warn a user about ``config``: its line warnings, the nodes not used yet, and
    the pgpool-II settings not used yet by feature.  With ``running`` (a reload), only what
    ``running`` did not already say."""
    nodes = Cluster.from_config(config).not_used_warning()
    if running is None:
        lines = list(config.warnings)
    else:
        lines = new_warnings(config, running)
        if nodes == Cluster.from_config(running).not_used_warning():
            nodes = None
    if nodes is not None:
        lines.append(nodes)
    return lines + unused_lines(config, running)
