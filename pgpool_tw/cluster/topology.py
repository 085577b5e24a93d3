"""Who is the primary, and how far behind each standby is: pgpool-II's rules, from what the
servers said in one round of checks.

Topology comes from PostgreSQL, never from a consensus of our own: each node is asked
``pg_is_in_recovery()`` (checks/sr_check.py does the asking); this module only decides.

Rules, streaming replication mode (pgpool-II's find_primary_node, verify_backend_node_status
and check_replication_time_lag):

- A node that answered is ``pg_status`` up, its ``pg_role`` what it said (``primary`` when not
  in recovery, ``standby`` when in recovery); a node that did not answer is down, ``unknown``.
- A node whose backend_flagN has ALWAYS_PRIMARY is the primary without asking (the lowest
  such), as pgpool-II trusts the flag: the user's failover tooling keeps that address on the
  primary (a cloud endpoint, a virtual IP).
- Otherwise the one node that says it is not in recovery is the primary; none: no primary,
  and every node is a standby ("all backends are regarded as standbys").
- Two or more say they are not in recovery (split brain): the one every standby that
  answered streams from (its pg_stat_replication names each of them by
  backend_application_nameN) is the true primary; when no single node qualifies (no
  standby, names not configured) the lowest-numbered one is, as pgpool-II keeps "the
  youngest primary node".  The others are false primaries: pgpool-II calls them invalid and
  detaches them with detach_false_primary, as failover does here (checks/failover.py
  ``on_round``); until then they have role ``unknown``, so nothing is routed there, and
  the caller logs them.  A detached node is not asked, so it cannot claim to be primary.
- Every node but the primary has role ``standby``, as pgpool-II's SHOW POOL_NODES shows.
- Delay in bytes: the primary's pg_current_wal_lsn() minus the standby's
  pg_last_wal_replay_lsn() (0 when ahead); in seconds: the primary's pg_stat_replication
  replay_lag for the row whose application_name is backend_application_nameN (NULL: 0, as
  pgpool-II; no such row: unknown).  The standby's own pg_last_xact_replay_timestamp() is
  kept but not used: on an idle primary it ages without any lag.
- A standby is lagging when delay_threshold_by_time > 0 and its delay in seconds is over it,
  or else when delay_threshold > 0 and its delay in bytes is over that (pgpool-II: a time
  threshold replaces the byte one).  Unknown delay is not lagging.
- replication_state / replication_sync_state: that same row's state and sync_state; '' when
  there is none (pgpool-II's empty columns).

Raw mode (pgpool-II's words in SHOW POOL_NODES): the first node that is up is ``main``, every
other node ``replica``; no delays.

Pure: no Twisted, no I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.protocol.rows import lsn_from_text

__all__ = [
    "MAIN",
    "NO_THRESHOLDS",
    "PRIMARY",
    "RAW",
    "REPLICA",
    "STANDBY",
    "STREAMING_REPLICATION",
    "UNKNOWN",
    "Decision",
    "NodeState",
    "Probe",
    "ReplicationRow",
    "Thresholds",
    "decide",
    "lsn_from_text",
]

# Roles: pgpool-II's words in streaming replication mode, and in the other modes.
PRIMARY, STANDBY, UNKNOWN = "primary", "standby", "unknown"
MAIN, REPLICA = "main", "replica"
# pg_status words (pgpool-II 4.3+'s actual node status).
UP, DOWN = "up", "down"
# clustering_mode values.
STREAMING_REPLICATION, RAW = "streaming_replication", "raw"


@dataclass(frozen=True)
class ReplicationRow:
    """One row of a primary's pg_stat_replication (one connected standby)."""

    application_name: str
    state: str = ""
    sync_state: str = ""
    #: replay_lag in seconds; None when the server says NULL (no recent activity).
    replay_lag: Optional[float] = None


@dataclass(frozen=True)
class Probe:
    """What one node answered in one round; ``reachable`` False when it did not."""

    reachable: bool
    in_recovery: Optional[bool] = None
    #: pg_current_wal_lsn(), asked of a node not in recovery.
    current_lsn: Optional[int] = None
    #: pg_last_wal_replay_lsn(), asked of a node in recovery.
    replay_lsn: Optional[int] = None
    #: pg_last_xact_replay_timestamp() as epoch seconds (kept for display, see the rules).
    replay_timestamp: Optional[float] = None
    #: pg_stat_replication, asked of a node not in recovery.
    replication: tuple[ReplicationRow, ...] = ()

    @property
    def answered(self) -> bool:
        return self.reachable and self.in_recovery is not None


@dataclass(frozen=True)
class Thresholds:
    """delay_threshold (bytes) and delay_threshold_by_time (seconds); 0 turns each off."""

    delay_threshold: int = 0
    delay_threshold_by_time: float = 0.0


@dataclass(frozen=True)
class NodeState:
    """What one round decided about one node (cluster.Node takes these fields)."""

    role: str
    pg_role: str
    pg_status: str
    delay_bytes: Optional[int] = None
    delay_seconds: Optional[float] = None
    replication_state: str = ""
    replication_sync_state: str = ""
    current_lsn: Optional[int] = None
    replay_lsn: Optional[int] = None
    lagging: bool = False


@dataclass(frozen=True)
class Decision:
    """One round's verdict: every node's state by index, the primary (or main) node, and
    the nodes that also claimed to be primary."""

    nodes: Mapping[int, NodeState]
    primary: Optional[int]
    false_primaries: tuple[int, ...] = ()


#: No delay threshold (pgpool-II's defaults).
NO_THRESHOLDS = Thresholds()


def decide(
    backends: Sequence[BackendNode],
    probes: Mapping[int, Probe],
    mode: str = STREAMING_REPLICATION,
    thresholds: Thresholds = NO_THRESHOLDS,
) -> Decision:
    """Apply the rules above to one round; a node without a probe counts as unreachable."""
    ordered = sorted(backends, key=lambda backend: backend.index)
    unreachable = Probe(reachable=False)
    seen = {backend.index: probes.get(backend.index, unreachable) for backend in ordered}
    if mode == RAW:
        return _raw(ordered, seen)
    return _streaming(ordered, seen, thresholds)


def _pg_role(probe: Probe) -> str:
    if not probe.answered:
        return UNKNOWN
    return STANDBY if probe.in_recovery else PRIMARY


def _pg_status(probe: Probe) -> str:
    return UP if probe.answered else DOWN


def _raw(backends: Sequence[BackendNode], probes: Mapping[int, Probe]) -> Decision:
    main = next((b.index for b in backends if probes[b.index].answered), None)
    nodes = {
        b.index: NodeState(
            role=MAIN if b.index == main else REPLICA,
            pg_role=_pg_role(probes[b.index]),
            pg_status=_pg_status(probes[b.index]),
        )
        for b in backends
    }
    return Decision(nodes, main)


def _streaming(
    backends: Sequence[BackendNode], probes: Mapping[int, Probe], thresholds: Thresholds
) -> Decision:
    claimants = [
        b for b in backends if probes[b.index].answered and not probes[b.index].in_recovery
    ]
    flagged = next((b for b in backends if b.always_primary), None)
    false_primaries: tuple[int, ...] = ()
    primary: Optional[BackendNode]
    if flagged is not None:
        primary = flagged
    elif len(claimants) <= 1:
        primary = claimants[0] if claimants else None
    else:
        primary = _true_primary(backends, probes, claimants)
        false_primaries = tuple(b.index for b in claimants if b is not primary)

    head = probes[primary.index] if primary is not None else None
    rows = {row.application_name: row for row in head.replication} if head is not None else {}
    nodes: dict[int, NodeState] = {}
    for backend in backends:
        probe = probes[backend.index]
        pg_role, pg_status = _pg_role(probe), _pg_status(probe)
        if primary is not None and backend.index == primary.index:
            nodes[backend.index] = NodeState(
                PRIMARY,
                pg_role,
                pg_status,
                delay_bytes=0 if probe.answered else None,
                delay_seconds=0.0 if probe.answered else None,
                current_lsn=probe.current_lsn,
            )
            continue
        role = UNKNOWN if backend.index in false_primaries else STANDBY
        if not probe.answered or head is None or not head.answered or role != STANDBY:
            nodes[backend.index] = NodeState(
                role, pg_role, pg_status, current_lsn=probe.current_lsn, replay_lsn=probe.replay_lsn
            )
            continue
        delay_bytes: Optional[int] = None
        if head.current_lsn is not None and probe.replay_lsn is not None:
            delay_bytes = max(0, head.current_lsn - probe.replay_lsn)
        row = rows.get(backend.application_name) if backend.application_name else None
        delay_seconds: Optional[float] = None
        if row is not None:
            delay_seconds = row.replay_lag if row.replay_lag is not None else 0.0
        nodes[backend.index] = NodeState(
            role,
            pg_role,
            pg_status,
            delay_bytes=delay_bytes,
            delay_seconds=delay_seconds,
            replication_state=row.state if row is not None else "",
            replication_sync_state=row.sync_state if row is not None else "",
            replay_lsn=probe.replay_lsn,
            lagging=_lagging(delay_bytes, delay_seconds, thresholds),
        )
    return Decision(nodes, primary.index if primary is not None else None, false_primaries)


def _true_primary(
    backends: Sequence[BackendNode], probes: Mapping[int, Probe], claimants: list[BackendNode]
) -> BackendNode:
    """Among several nodes not in recovery, the one every answering standby streams from."""
    standbys = [b for b in backends if probes[b.index].answered and probes[b.index].in_recovery]
    names = {b.application_name for b in standbys}
    if standbys and "" not in names:
        owners = [
            claimant
            for claimant in claimants
            if names <= {row.application_name for row in probes[claimant.index].replication}
        ]
        if len(owners) == 1:
            return owners[0]
    return claimants[0]


def _lagging(
    delay_bytes: Optional[int], delay_seconds: Optional[float], thresholds: Thresholds
) -> bool:
    if thresholds.delay_threshold_by_time > 0:
        return delay_seconds is not None and delay_seconds > thresholds.delay_threshold_by_time
    if thresholds.delay_threshold > 0:
        return delay_bytes is not None and delay_bytes > thresholds.delay_threshold
    return False
