"""Nodes built from the ``backend_*N`` settings, with a role and a status, and the primary.

Until the first round of checks (checks/sr_check.py) every session goes to the
lowest-numbered node (node 0 in every usual pgpool.conf), as pgpool-II's "main node": its
role is ``primary``, the other nodes' ``unknown``.  Each round then sets what pgpool-II's
SHOW POOL_NODES shows, decided by ``topology.py`` from what the servers said: the role
(``primary``/``standby``; ``main``/``replica`` in raw mode), ``pg_role`` and ``pg_status`` (what
the server said, up or down, as last checked), the replication delay in bytes and seconds,
``replication_state`` and ``replication_sync_state``, the LSNs, ``last_status_change``, and
whether a standby is over its delay threshold (``lagging``, which the router reads).  When
a check finds no primary, writes go where pgpool-II sends them then: its "main node", the
lowest-numbered node not down (:attr:`Cluster.primary`; :attr:`Cluster.detected_primary` is
None).

Statuses are pgpool-II's words (SHOW POOL_NODES, pcp_node_info): every configured node starts
``waiting`` ("up, no connection yet"), as pgpool-II's nodes do at start; ``up`` once a
connection is pooled, ``down`` when detached; ``unused`` is pgpool-II's word for a slot with
no node, so no node here has it.  Failover (checks/failover.py) detaches nodes
(:meth:`Cluster.detach`), attaches them again and names the primary it found
(:meth:`Cluster.set_primary`).  A file that names more than one node gets one line
(:meth:`Cluster.not_used_warning`) saying what is done with them.

Pure: no Twisted, no logging; the caller logs (:meth:`Cluster.apply` returns the lines).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

from pgpool_tw.cluster.classify import AVAILABLE as PARSER_AVAILABLE
from pgpool_tw.cluster.topology import (
    MAIN,
    PRIMARY,
    RAW,
    REPLICA,
    STANDBY,
    STREAMING_REPLICATION,
    UNKNOWN,
    Decision,
    NodeState,
)
from pgpool_tw.config.report import new_warnings, unused_lines
from pgpool_tw.config.settings import BackendNode, Config

__all__ = [
    "DOWN",
    "MAIN",
    "PRIMARY",
    "REPLICA",
    "STANDBY",
    "UNKNOWN",
    "UNUSED",
    "UP",
    "WAITING",
    "Cluster",
    "Node",
    "settings_report",
]

# Roles are topology.py's: PRIMARY/STANDBY (streaming replication), MAIN/REPLICA (raw),
# UNKNOWN (not checked yet, or a false primary).
# Statuses (pgpool-II's words, in its order 0..3).
UNUSED, WAITING, UP, DOWN = "unused", "waiting", "up", "down"
_STATUSES = (UNUSED, WAITING, UP, DOWN)


@dataclass(frozen=True)
class Node:
    """One server as the cluster sees it: its settings, role and status, and what the last
    round of checks found (pgpool-II's SHOW POOL_NODES columns)."""

    backend: BackendNode
    role: str
    status: str = WAITING
    #: What the server itself said (pg_is_in_recovery): primary, standby or unknown.
    pg_role: str = UNKNOWN
    #: up or down as last checked; unknown before the first check.
    pg_status: str = UNKNOWN
    #: Replication delay behind the primary, in WAL bytes and in seconds (None: unknown).
    delay_bytes: Optional[int] = None
    delay_seconds: Optional[float] = None
    #: The primary's pg_stat_replication state and sync_state for this standby.
    replication_state: str = ""
    replication_sync_state: str = ""
    #: Wall-clock time (epoch seconds) role or status last changed; the start until then.
    last_status_change: float = 0.0
    #: pg_current_wal_lsn() of a primary, pg_last_wal_replay_lsn() of a standby.
    current_lsn: Optional[int] = None
    replay_lsn: Optional[int] = None
    #: A standby over delay_threshold / delay_threshold_by_time: no reads go there.
    lagging: bool = False

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

    Built again from each Config a reload applies; :meth:`carry_over` keeps what the old
    one learnt about the nodes whose address did not change.
    """

    def __init__(
        self,
        nodes: tuple[Node, ...],
        path: str = "pgpool.conf",
        clustering_mode: str = RAW,
        load_balance_mode: bool = True,
    ) -> None:
        self._nodes = {node.index: node for node in nodes}
        self.path = path
        self.clustering_mode = clustering_mode
        self.load_balance_mode = load_balance_mode
        #: A round of checks has set the roles (until then: the lowest node is primary).
        self.checked = False
        #: Rounds applied so far: a round counted after another began after it ended, so
        #: what it saw is newer than anything done before the first (transaction-mode
        #: read_your_writes compares them).
        self.rounds = 0
        #: The last false-primary line apply() returned, so it is logged once per change.
        self._false_line: Optional[str] = None

    @classmethod
    def from_config(cls, config: Config, now: Optional[float] = None) -> Cluster:
        """The nodes of ``config``, the lowest-numbered one primary until a check says."""
        started = time.time() if now is None else now
        primary = config.primary_backend
        nodes = tuple(
            Node(
                backend,
                PRIMARY if backend is primary else UNKNOWN,
                last_status_change=started,
            )
            for backend in config.backends
        )
        return cls(
            nodes,
            config.path or "pgpool.conf",
            config.clustering_mode,
            config.load_balance_mode,
        )

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
    def detected_primary(self) -> Optional[Node]:
        """The node the last check found primary (raw mode: main), or the lowest-numbered
        node before any check; None when the check found none or it was detached."""
        for node in self:
            if (node.role == PRIMARY or node.role == MAIN) and node.status != DOWN:
                return node
        return None

    @property
    def main(self) -> Optional[Node]:
        """pgpool-II's "main node": the lowest-numbered node not down (failover's %m)."""
        return next((node for node in self if node.status != DOWN), None)

    @property
    def primary(self) -> Optional[Node]:
        """The node writes go to: the detected primary; when there is none (a check found
        none, or the primary was detached and no other has been found yet), pgpool-II's
        main node, as PRIMARY_NODE_ID falls back to it: a standby there refuses writes with
        PostgreSQL's own read-only error while reads carry on.  None: every node is down."""
        found = self.detected_primary
        return found if found is not None else self.main

    @property
    def standbys(self) -> list[Node]:
        """The nodes other than the primary that a check found (standby or replica role)."""
        return [node for node in self if node.role == STANDBY or node.role == REPLICA]

    def set_status(self, index: int, status: str, now: Optional[float] = None) -> None:
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}")
        node = self._nodes[index]
        if node.status != status:
            changed = time.time() if now is None else now
            self._nodes[index] = replace(node, status=status, last_status_change=changed)

    def detach(self, index: int, now: Optional[float] = None) -> None:
        """``index`` is down (failover): no session or statement goes there again until it
        is attached.  A detached primary is the primary no more (pgpool-II's
        PRIMARY_NODE_ID becomes -1 until a search finds one); in raw mode the next node up
        becomes main."""
        node = self._nodes[index]
        role = node.role
        if role == PRIMARY:
            role = STANDBY
        elif role == MAIN:
            role = REPLICA
        changed = time.time() if now is None else now
        self._nodes[index] = replace(
            node, status=DOWN, role=role, lagging=False, last_status_change=changed
        )
        if self.clustering_mode != STREAMING_REPLICATION and node.role == MAIN:
            following = self.main
            if following is not None:
                self._nodes[following.index] = replace(following, role=MAIN)

    def attach(self, index: int, now: Optional[float] = None) -> None:
        """``index`` may take sessions again (failback): pgpool-II's "waiting" until a
        connection to it is made; its role is what the next check finds (a standby until
        then, or main in raw mode when no node is)."""
        node = self._nodes[index]
        changed = time.time() if now is None else now
        role = node.role
        if self.clustering_mode != STREAMING_REPLICATION:
            role = MAIN if self.detected_primary is None else REPLICA
        elif role not in (PRIMARY, STANDBY):
            role = STANDBY
        self._nodes[index] = replace(node, status=WAITING, role=role, last_status_change=changed)

    def set_primary(self, index: int, now: Optional[float] = None) -> None:
        """``index`` is the primary now (a promotion, or the search after a failover found
        it); every other node not down is a standby."""
        changed = time.time() if now is None else now
        for node in list(self):
            role = PRIMARY if node.index == index else STANDBY
            if node.role != role:
                self._nodes[node.index] = replace(node, role=role, last_status_change=changed)

    def statuses(self) -> list[tuple[int, str]]:
        """(index, status) of every node, for pgpool_status."""
        return [(node.index, node.status) for node in self]

    def apply(self, decision: Decision, now: float) -> list[str]:
        """Take one round's verdict; return one line per change worth a log line.

        A change of role or pg_status moves ``last_status_change`` (pgpool-II moves it
        when status or role changes); delays and LSNs change every round, silently.
        """
        lines: list[str] = []
        kept = self.detected_primary
        if decision.primary is not None or kept is None:
            kept = None
        elif (
            decision.nodes.get(kept.index, None) is None
            or decision.nodes[kept.index].pg_role != UNKNOWN
        ):
            kept = None  # it answered, in recovery: no longer the primary
        for index, state in decision.nodes.items():
            node = self._nodes.get(index)
            if node is None:
                continue
            updates: dict[str, Any] = {f.name: getattr(state, f.name) for f in fields(NodeState)}
            if node.status == DOWN:
                # Detached: what it says is shown, but its role is failover's to give.
                updates = {"pg_role": state.pg_role, "pg_status": state.pg_status}
            if kept is not None and index == kept.index:
                # The primary did not answer this round: it stays the primary (a check
                # that cannot reach it is not a failover; health checks decide that).
                updates["role"] = PRIMARY
            changes = [
                f"{name} {getattr(node, name)} -> {updates[name]}"
                for name in ("role", "pg_status")
                if name in updates and getattr(node, name) != updates[name]
            ]
            if changes:
                updates["last_status_change"] = now
                lines.append(f"node {index} ({node.address}): {', '.join(changes)}")
            self._nodes[index] = replace(node, **updates)
        if decision.false_primaries:
            chosen = "none" if decision.primary is None else f"node {decision.primary}"
            names = ", ".join(str(index) for index in decision.false_primaries)
            word = "node" if len(decision.false_primaries) == 1 else "nodes"
            line = (
                f"{word} {names} also not in recovery (a false primary): the primary is "
                f"{chosen}; nothing is routed to {names}"
            )
            if line != self._false_line:
                lines.append(line)
            self._false_line = line
        else:
            self._false_line = None
        self.checked = True
        self.rounds += 1
        return lines

    def carry_over(self, previous: Cluster) -> None:
        """A reload built this cluster: keep ``previous``'s status and checked state for
        every node whose address did not change."""
        for index, node in self._nodes.items():
            before = previous.get(index)
            if before is not None and before.address == node.address:
                self._nodes[index] = replace(before, backend=node.backend)
        self.checked = previous.checked
        self.rounds = previous.rounds

    def not_used_warning(self) -> Optional[str]:
        """One line saying what is done with the nodes beyond the primary, or None when
        there is only one node.

        It no longer claims standbys are unused in streaming replication mode with
        load_balance_mode on (reads go to them); what is still missing there is failover.
        """
        primary = self.primary
        others = [node for node in self if node is not primary]
        if primary is None or not others:
            return None
        listed = ", ".join(f"{node.index} ({node.address})" for node in others)
        word = "node" if len(others) == 1 else "nodes"
        marked = [node.index for node in self if node.backend.always_primary]
        flags = ", ".join(f"backend_flag{index}" for index in marked)
        if self.clustering_mode == STREAMING_REPLICATION:
            every = ", ".join(f"{node.index} ({node.address})" for node in self)
            target = "the primary pg_is_in_recovery() finds"
            if marked:
                target = f"the ALWAYS_PRIMARY node ({flags})"
            if self.load_balance_mode:
                use = f"writes go to {target}, reads are load balanced over the standbys"
            else:
                use = f"every session goes to {target} (load_balance_mode is off)"
            return f"{self.path}: streaming replication over backend nodes {every}: {use}"
        line = (
            f"{self.path}: backend {word} {listed} not used while node {primary.index} "
            f"({primary.address}) is up: every session goes to node {primary.index}, the "
            "first node that is up (clustering_mode raw)"
        )
        if marked:
            line += f"; {flags} ALWAYS_PRIMARY has no meaning in raw mode"
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
    routes = (
        config.clustering_mode == STREAMING_REPLICATION
        and config.load_balance_mode
        and len(config.backends) > 1
    )
    if running is None and routes and not PARSER_AVAILABLE:
        lines.append(
            f"{config.path or 'pgpool.conf'}: pglast (PostgreSQL's parser) is not installed: "
            "every statement goes to the primary"
        )
    return lines + unused_lines(config, running)
