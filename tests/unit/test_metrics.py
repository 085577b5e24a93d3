"""admin/metrics.py: a snapshot's metric families, read back by prometheus_client's own
parser, and the HTTP resource that serves them."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from pgpool_tw.admin.metrics import MetricsResource, SnapshotCollector, metrics_site
from pgpool_tw.admin.snapshot import (
    CLIENT_STATES,
    SERVER_STATES,
    NodeStats,
    PinnedClient,
    PoolStats,
    Snapshot,
)


def _pool(key: str, user: str, database: str, **values: Any) -> PoolStats:
    fields: dict[str, Any] = {
        "clients": MappingProxyType({**dict.fromkeys(CLIENT_STATES, 0), "active": 2}),
        "waiting": 1,
        "max_wait": 0.5,
        "servers": MappingProxyType({0: {**dict.fromkeys(SERVER_STATES, 0), "idle": 3}}),
        "logins": 4,
        "xacts": 10,
        "queries": 12,
        "bytes_in": 100,
        "bytes_out": 1000,
        "wait_time": 1.5,
        "pinned": 1,
    }
    fields.update(values)
    return PoolStats(key, user, database, **fields)


SNAPSHOT = Snapshot(
    taken_at=0.0,
    clients=MappingProxyType({**dict.fromkeys(CLIENT_STATES, 0), "active": 5, "waiting": 1}),
    waiting=1,
    max_wait=0.5,
    pools=MappingProxyType(
        {
            "a": _pool("a", "alice", "shop"),
            # The same user and database with other startup options: summed with "a".
            "a2": _pool("a2", "alice", "shop", xacts=5, max_wait=2.0),
            "b": _pool("b", "bob", "shop", xacts=7, pinned=0),
        }
    ),
    pinned=(
        PinnedClient("1.2.3.4:5", "alice", "shop", ("listen", "set")),
        PinnedClient("1.2.3.4:6", "alice", "shop", ("set",)),
    ),
    nodes=(
        NodeStats(0, "db0", 5432, "up", "primary", "primary", 1.0, 0, 0.0, False, 11),
        NodeStats(1, "db1", 5433, "down", "standby", "unknown", 0.5, None, None, False, 3),
    ),
    preauth=MappingProxyType(
        {"clients": 7, "shed": 2, "timed_out": 30, "evicted": 4, "failed_logins": 9}
    ),
)


def samples(snapshot: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class MetricsTests(SynchronousTestCase):
    def test_the_snapshot_as_metric_families(self) -> None:
        got = samples(SNAPSHOT)
        shop_alice = (("database", "shop"), ("user", "alice"))
        shop_bob = (("database", "shop"), ("user", "bob"))
        self.assertEqual(got[("pgpool_tw_clients", (("state", "active"),))], 5)
        self.assertEqual(got[("pgpool_tw_clients_waiting", ())], 1)
        self.assertEqual(got[("pgpool_tw_preauth_clients", ())], 7)
        self.assertEqual(got[("pgpool_tw_preauth_closed_total", (("reason", "timed_out"),))], 30)
        self.assertEqual(got[("pgpool_tw_preauth_closed_total", (("reason", "evicted"),))], 4)
        self.assertEqual(got[("pgpool_tw_failed_logins_total", ())], 9)
        self.assertEqual(got[("pgpool_tw_pool_transactions_total", shop_alice)], 15)
        self.assertEqual(got[("pgpool_tw_pool_transactions_total", shop_bob)], 7)
        self.assertEqual(got[("pgpool_tw_pool_max_wait_seconds", shop_alice)], 2.0)
        self.assertEqual(got[("pgpool_tw_pool_sent_bytes_total", shop_alice)], 2000)
        self.assertEqual(got[("pgpool_tw_pool_wait_seconds_total", shop_bob)], 1.5)
        self.assertEqual(got[("pgpool_tw_pool_pinned_clients", shop_alice)], 2)
        self.assertEqual(
            got[
                (
                    "pgpool_tw_pool_servers",
                    (*shop_alice[:1], ("node", "0"), ("state", "idle"), shop_alice[1]),
                )
            ],
            6,
        )
        self.assertEqual(
            got[("pgpool_tw_pool_clients", (shop_bob[0], ("state", "active"), shop_bob[1]))], 2
        )
        self.assertEqual(got[("pgpool_tw_pinned_clients", (("reason", "set"),))], 2)
        self.assertEqual(got[("pgpool_tw_pinned_clients", (("reason", "listen"),))], 1)
        node0 = (("host", "db0"), ("node", "0"), ("port", "5432"))
        node1 = (("host", "db1"), ("node", "1"), ("port", "5433"))
        self.assertEqual(got[("pgpool_tw_node_up", node0)], 1)
        self.assertEqual(got[("pgpool_tw_node_up", node1)], 0)
        self.assertEqual(
            got[
                (
                    "pgpool_tw_node_info",
                    (
                        ("node", "1"),
                        ("pg_role", "unknown"),
                        ("role", "standby"),
                        ("status", "down"),
                    ),
                )
            ],
            1,
        )
        self.assertEqual(got[("pgpool_tw_node_selects_total", (("node", "0"),))], 11)
        self.assertIn(("pgpool_tw_node_replication_delay_bytes", (("node", "0"),)), got)
        self.assertNotIn(("pgpool_tw_node_replication_delay_bytes", (("node", "1"),)), got)

    def test_each_scrape_takes_a_new_snapshot(self) -> None:
        taken = []

        def take() -> Snapshot:
            taken.append(1)
            return SNAPSHOT

        resource = metrics_site(take).resource
        for _ in range(2):
            request = DummyRequest([b"metrics"])
            request.path = b"/metrics"
            body = resource.render_GET(request)  # type: ignore[attr-defined]
            self.assertIn(b'pgpool_tw_clients{state="active"} 5.0', body)
        self.assertEqual(len(taken), 2)

    def test_other_paths_are_not_found(self) -> None:
        resource = metrics_site(lambda: SNAPSHOT).resource
        assert isinstance(resource, MetricsResource)
        request = DummyRequest([b"other"])
        request.path = b"/other"
        resource.render_GET(request)
        self.assertEqual(request.responseCode, 404)
