"""Which nodes a session uses: whether it routes at all, and its load-balancing node.

pgpool-II's child picks one load-balancing node per session when the session
starts (``select_load_balancing_node``): a node chosen at random in proportion to
``backend_weightN`` among the nodes that may take reads, unless
``app_name_redirect_preference_list`` or ``database_redirect_preference_list``
names one for the session's application or database.  The per-statement choice
(primary or this node) is the session's (``session/routed.py``), from the
classifier's verdicts (``classify.py``).

Pure: no Twisted, no I/O; randomness comes in as a function so tests can fix it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Optional

from pgpool_tw.cluster.cluster import DOWN, Cluster, Node
from pgpool_tw.config.routing import Redirect
from pgpool_tw.config.settings import Config

__all__ = ["choose_lb_node", "read_by_weight", "readable", "routing_on"]

STREAMING = "streaming_replication"


def routing_on(config: Config, cluster: Cluster) -> bool:
    """Sessions route statements: streaming replication, load balancing, several nodes."""
    return config.clustering_mode == STREAMING and config.load_balance_mode and len(cluster) > 1


def _alive(node: Optional[Node]) -> bool:
    return node is not None and node.status != DOWN and node.pg_status != DOWN


def readable(node: Optional[Node]) -> bool:
    """A node may take a read now: not detached, answering, not past delay_threshold."""
    return node is not None and _alive(node) and not node.lagging


def _candidates(cluster: Cluster) -> list[Node]:
    """Nodes a session may pick at its start (delay is judged per statement)."""
    return [node for node in cluster if node.weight > 0 and _alive(node)]


def _weighted(nodes: Sequence[Node], rng: Callable[[], float]) -> Optional[Node]:
    total = sum(node.weight for node in nodes)
    if total <= 0:
        return None
    point = rng() * total
    for node in nodes:
        point -= node.weight
        if point < 0:
            return node
    return nodes[-1]


def _redirect(
    rules: Sequence[Redirect], name: str, cluster: Cluster, primary: int, rng: Callable[[], float]
) -> Optional[Node]:
    """The node a redirect preference list names for ``name``, if its dice say so."""
    for rule in rules:
        if not rule.matches(name):
            continue
        target = rule.target
        weight = rule.weight
        if weight < 1.0 and rng() >= weight:
            return None
        if target == "primary":
            return cluster.get(primary)
        if target == "standby":
            standbys = [node for node in _candidates(cluster) if node.index != primary]
            return _weighted(standbys, rng)
        node = cluster.get(int(target))
        return node if _alive(node) else None
    return None


def choose_lb_node(
    config: Config,
    cluster: Cluster,
    primary: int,
    database: str,
    application_name: str,
    user: str = "",
    rng: Callable[[], float] = random.random,
) -> int:
    """The session's load-balancing node (the primary's index when nothing else may read).

    The redirect preference lists first, in pgpool-II's order of precedence:
    application name, database, user.
    """
    for setting, name in (
        ("app_name_redirect_preference_list", application_name),
        ("database_redirect_preference_list", database),
        ("user_redirect_preference_list", user),
    ):
        rules: tuple[Redirect, ...] = getattr(config, setting)
        if rules and name:
            node = _redirect(rules, name, cluster, primary, rng)
            if node is not None:
                return node.index
    candidates = _candidates(cluster)
    if config.statement_level_load_balance:
        # The session keeps a standby at hand; each read then weighs it against the
        # primary (``read_by_weight``).
        candidates = [node for node in candidates if node.index != primary] or candidates
    chosen = _weighted(candidates, rng)
    if chosen is None:
        return primary
    if config.prefer_lower_delay_standby and chosen.lagging:
        standbys = [n for n in _candidates(cluster) if n.index != primary]
        if standbys:
            chosen = min(standbys, key=lambda n: n.delay_bytes or 0)
    return chosen.index


def read_by_weight(
    cluster: Cluster, primary: int, lb: int, rng: Callable[[], float] = random.random
) -> bool:
    """statement_level_load_balance: this read goes to ``lb`` rather than the primary,
    in proportion to their weights (pgpool-II chooses per statement)."""
    lb_node, primary_node = cluster.get(lb), cluster.get(primary)
    lb_weight = lb_node.weight if lb_node is not None else 0.0
    primary_weight = primary_node.weight if primary_node is not None else 0.0
    total = lb_weight + primary_weight
    return total > 0 and rng() * total < lb_weight
