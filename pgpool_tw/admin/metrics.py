"""Prometheus metrics: ``/metrics`` over HTTP, read from the one stats snapshot.

A scrape takes a snapshot (``admin/snapshot.py``) in the reactor's thread and turns
it into metric families; nothing is counted for it on the hot path, and nothing runs
between scrapes.  ``prometheus_client`` writes the text format (its own parser reads
it back in the tests).  Settings: ``metrics_listen_addresses`` (default ``''``: no
endpoint) and ``metrics_port`` (default 9719).

Families (prefix ``pgpool_tw_``; per pool the labels are ``database`` and ``user``,
pools of one user and database with other startup options summed):

* ``clients{state}``, ``clients_waiting``, ``client_max_wait_seconds``;
* ``pool_clients{state}``, ``pool_servers{node,state}``, ``pool_waiting_clients``,
  ``pool_max_wait_seconds``, ``pool_pinned_clients``;
* counters since the start: ``pool_logins_total``, ``pool_transactions_total``,
  ``pool_queries_total``, ``pool_received_bytes_total`` (from clients),
  ``pool_sent_bytes_total`` (to clients), ``pool_wait_seconds_total``;
* ``pinned_clients{reason}``: transaction-mode clients pinned, by reason (a client
  with two reasons counts under both);
* ``node_up{node,host,port}`` (1 up or waiting for its first client, 0 down or unused),
  ``node_info{node,status,role,pg_role}`` (1), ``node_weight``,
  ``node_replication_delay_bytes`` / ``_seconds`` (where measured),
  ``node_selects_total``;
* histograms per pool and node (labels ``database``, ``user``, ``node``):
  ``pool_wait_duration_seconds`` (each client's wait for a slot or, in transaction
  pooling, a server) and ``pool_query_duration_seconds`` (PgBouncer's query time: a
  server busy from a client's Query, Sync or FunctionCall until the ReadyForQuery that
  leaves nothing owed).  The trackers count by log2 bucket of microseconds in C; the
  buckets' upper bounds are 2^k microseconds, from 16 us (``_LOW``) to about 67 s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Callable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pgpool_tw.admin.snapshot import CLIENT_STATES, SERVER_STATES, Snapshot

PREFIX = "pgpool_tw_"
_POOL = ["database", "user"]

#: A node's statuses that take clients (pgpool-II's "up" and "waiting").
_UP = ("up", "waiting")


class SnapshotCollector(Collector):
    """Metric families from a fresh snapshot at each scrape."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self.take = take

    def collect(self) -> Iterator[Metric]:
        snapshot = self.take()
        yield from _overall(snapshot)
        yield from _pools(snapshot)
        yield from _pinned(snapshot)
        yield from _nodes(snapshot)
        yield from _histograms(snapshot)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=labels)


def _overall(snapshot: Snapshot) -> Iterator[Metric]:
    clients = _gauge("clients", "Client connections by state.", ["state"])
    for state in CLIENT_STATES:
        clients.add_metric([state], snapshot.clients.get(state, 0))
    yield clients
    waiting = _gauge("clients_waiting", "Clients waiting for a slot or a server.", [])
    waiting.add_metric([], snapshot.waiting)
    yield waiting
    longest = _gauge("client_max_wait_seconds", "The longest wait now, in seconds.", [])
    longest.add_metric([], snapshot.max_wait)
    yield longest
    preauth = snapshot.preauth
    unauthenticated = _gauge(
        "preauth_clients", "Client connections not authenticated yet (max_preauth_clients).", []
    )
    unauthenticated.add_metric([], preauth.get("clients", 0))
    yield unauthenticated
    closed = _counter(
        "preauth_closed",
        "Unauthenticated clients closed: for max_preauth_clients (shed), at "
        "authentication_timeout (timed_out), or to make room on a full server (evicted).",
        ["reason"],
    )
    for reason in ("shed", "timed_out", "evicted"):
        closed.add_metric([reason], preauth.get(reason, 0))
    yield closed
    failed = _counter("failed_logins", "Logins refused for their credentials.", [])
    failed.add_metric([], preauth.get("failed_logins", 0))
    yield failed


def _pools(snapshot: Snapshot) -> Iterator[Metric]:
    """Per user and database (PgBouncer's SHOW POOLS and SHOW STATS meanings)."""
    clients = _gauge("pool_clients", "Client connections of the pool by state.", [*_POOL, "state"])
    servers = _gauge(
        "pool_servers",
        "Server connections of the pool by node and state.",
        [*_POOL, "node", "state"],
    )
    gauges = {
        "waiting": _gauge("pool_waiting_clients", "Clients of the pool waiting.", _POOL),
        "max_wait": _gauge("pool_max_wait_seconds", "The pool's longest wait now.", _POOL),
        "pinned": _gauge(
            "pool_pinned_clients", "Transaction-mode clients pinned to their server.", _POOL
        ),
    }
    counters = {
        "logins": _counter("pool_logins", "Sessions that got a server connection.", _POOL),
        "xacts": _counter("pool_transactions", "Transactions ended.", _POOL),
        "queries": _counter("pool_queries", "Queries, Syncs and function calls answered.", _POOL),
        "bytes_in": _counter("pool_received_bytes", "Bytes relayed from clients.", _POOL),
        "bytes_out": _counter("pool_sent_bytes", "Bytes relayed to clients.", _POOL),
        "wait_time": _counter("pool_wait_seconds", "Seconds admitted clients waited.", _POOL),
    }
    by_pool: dict[tuple[str, str], dict[str, Any]] = {}
    for pool in snapshot.pools.values():
        labels = (pool.database, pool.user)
        sums = by_pool.setdefault(labels, {"clients": {}, "servers": {}, "max_wait": 0.0})
        for state, count in pool.clients.items():
            sums["clients"][state] = sums["clients"].get(state, 0) + count
        for node, states in pool.servers.items():
            node_sums = sums["servers"].setdefault(node, {})
            for state, count in states.items():
                node_sums[state] = node_sums.get(state, 0) + count
        sums["max_wait"] = max(sums["max_wait"], pool.max_wait)
        for name in ("waiting", "pinned", *counters):
            sums[name] = sums.get(name, 0) + getattr(pool, name)
    for (database, user), sums in sorted(by_pool.items()):
        names = [database, user]
        for state in CLIENT_STATES:
            clients.add_metric([*names, state], sums["clients"].get(state, 0))
        for node, states in sorted(sums["servers"].items()):
            for state in SERVER_STATES:
                servers.add_metric([*names, str(node), state], states.get(state, 0))
        for name, family in gauges.items():
            family.add_metric(names, sums[name])
        for name, counter in counters.items():
            counter.add_metric(names, sums[name])
    yield clients
    yield servers
    yield from gauges.values()
    yield from counters.values()


#: The histograms' buckets: log2 buckets 0.._LOW fold into the first, bounds 2^k us up
#: to 2^_HIGH us; the rest is +Inf.
_LOW, _HIGH = 4, 26


def _buckets(counts: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative (upper bound in seconds, count) pairs from log2 bucket counts."""
    out: list[tuple[str, float]] = []
    seen = 0
    for k, count in enumerate(counts):
        seen += count
        if _LOW <= k <= _HIGH:
            out.append((repr((1 << k) / 1e6), seen))
    out.append(("+Inf", seen))
    return out


def _histograms(snapshot: Snapshot) -> Iterator[Metric]:
    labels = [*_POOL, "node"]
    waits = HistogramMetricFamily(
        PREFIX + "pool_wait_duration_seconds",
        "Clients' waits for a slot or (transaction pooling) a server.",
        labels=labels,
    )
    queries = HistogramMetricFamily(
        PREFIX + "pool_query_duration_seconds",
        "Server busy periods: from a client's query until nothing is owed.",
        labels=labels,
    )
    merged: dict[tuple[str, str, str], list[Any]] = {}
    for pool in snapshot.pools.values():
        key = (pool.database, pool.user, str(pool.node))
        sums = merged.setdefault(key, [[0] * 32, 0.0, [0] * 32, 0.0])
        for i, count in enumerate(pool.wait_hist):
            sums[0][i] += count
        sums[1] += pool.wait_time
        for i, count in enumerate(pool.query_hist):
            sums[2][i] += count
        sums[3] += pool.query_time
    for key, (wait_hist, wait_time, query_hist, query_time) in sorted(merged.items()):
        waits.add_metric(list(key), _buckets(wait_hist), wait_time)
        queries.add_metric(list(key), _buckets(query_hist), query_time)
    yield waits
    yield queries


def _pinned(snapshot: Snapshot) -> Iterator[Metric]:
    reasons: dict[str, int] = {}
    for client in snapshot.pinned:
        for reason in client.reasons:
            reasons[reason] = reasons.get(reason, 0) + 1
    family = _gauge("pinned_clients", "Transaction-mode clients pinned, by reason.", ["reason"])
    for reason, count in sorted(reasons.items()):
        family.add_metric([reason], count)
    yield family


def _nodes(snapshot: Snapshot) -> Iterator[Metric]:
    up = _gauge(
        "node_up", "1 while the node takes clients (up or waiting).", ["node", "host", "port"]
    )
    info = _gauge(
        "node_info",
        "The node's status and roles (always 1).",
        ["node", "status", "role", "pg_role"],
    )
    weight = _gauge("node_weight", "The node's load-balancing weight.", ["node"])
    delay_bytes = _gauge(
        "node_replication_delay_bytes", "WAL bytes the node is behind the primary.", ["node"]
    )
    delay_seconds = _gauge(
        "node_replication_delay_seconds", "Seconds the node is behind the primary.", ["node"]
    )
    selects = _counter("node_selects", "Reads sent to the node.", ["node"])
    for node in snapshot.nodes:
        index = str(node.index)
        up.add_metric([index, node.host, str(node.port)], 1 if node.status in _UP else 0)
        info.add_metric([index, node.status, node.role, node.pg_role], 1)
        weight.add_metric([index], node.weight)
        if node.delay_bytes is not None:
            delay_bytes.add_metric([index], node.delay_bytes)
        if node.delay_seconds is not None:
            delay_seconds.add_metric([index], node.delay_seconds)
        selects.add_metric([index], node.select_count)
    yield from (up, info, weight, delay_bytes, delay_seconds, selects)


class MetricsResource(Resource):
    """``/metrics``: the registry's families in Prometheus's text format, made in the
    reactor's thread (a snapshot reads live structures)."""

    isLeaf = True  # noqa: N815 (Twisted's name)

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:  # noqa: N802 (Twisted's name)
        if request.path not in (b"/metrics", b"/metrics/"):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: the metrics are at /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.registry)


def metrics_site(take: Callable[[], Snapshot]) -> Site:
    """The HTTP site of ``/metrics`` over snapshots from ``take``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(take))
    site = _QuietSite(MetricsResource(registry))
    site.noisy = False
    site.displayTracebacks = False
    return site


class _QuietSite(Site):
    """No access log line per scrape (a scraper every few seconds would fill the log)."""

    def log(self, request: Any) -> None:
        pass
