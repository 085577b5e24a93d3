"""/metrics with a real PostgreSQL and real clients, scraped over HTTP and read by
prometheus_client's own parser: the counters move with the traffic and agree with the
stats snapshot, in session mode and in transaction mode on the C loop's lane."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Generator
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.service import PgpoolService
from tests.integration.harness import PoolerTestCase, RawClient

Steps = Generator[Deferred[Any], Any, None]


def scrape(
    port: int, path: str = "/metrics"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class MetricsTests(PoolerTestCase):
    c_loop = True

    def start(self, **settings: Any) -> tuple[PgpoolService, str, str]:
        service = self.start_pooler(
            metrics_listen_addresses=("127.0.0.1",), metrics_port=0, **settings
        )
        user, db = self.role_and_db()
        return service, user, db

    @inlineCallbacks
    def check_counts(self, service: PgpoolService, user: str, db: str) -> Steps:
        port = service.metrics_port
        assert port is not None
        labels = (("database", db), ("user", user))

        def run() -> tuple[dict[Any, float], dict[Any, float]]:
            before = scrape(port)
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            for i in range(25):
                client.query(f"select {i}")
            during = scrape(port)
            client.close()
            return before, during

        before, during = yield self.in_thread(run)
        self.assertEqual(before.get(("pgpool_tw_pool_transactions_total", labels), 0), 0)
        self.assertGreaterEqual(during[("pgpool_tw_pool_transactions_total", labels)], 25)
        self.assertGreaterEqual(during[("pgpool_tw_pool_queries_total", labels)], 25)
        self.assertGreater(during[("pgpool_tw_pool_sent_bytes_total", labels)], 0)
        self.assertEqual(during[("pgpool_tw_clients", (("state", "active"),))], 1)
        node = (("host", self.pg.host), ("node", "0"), ("port", str(self.pg.port)))
        self.assertEqual(during[("pgpool_tw_node_up", node)], 1)
        # The same counters as the snapshot's, read in the reactor's thread.
        snapshot = service.snapshot()
        (pool,) = snapshot.pools_of(user, db)
        after = yield self.in_thread(scrape, port)
        self.assertEqual(after[("pgpool_tw_pool_transactions_total", labels)], pool.xacts)
        self.assertEqual(after[("pgpool_tw_pool_queries_total", labels)], pool.queries)
        # Query time: one busy period per query of this one-at-a-time client, in the
        # histogram's buckets, cumulative, their sum the seconds counted.
        with_node = tuple(sorted((*labels, ("node", "0"))))
        count = after[("pgpool_tw_pool_query_duration_seconds_count", with_node)]
        self.assertEqual(count, pool.queries)
        buckets = sorted(
            (float(dict(names)["le"]), value)
            for (name, names), value in after.items()
            if name == "pgpool_tw_pool_query_duration_seconds_bucket"
            and dict(names)["database"] == db
        )
        self.assertEqual(buckets[-1], (float("inf"), count))
        self.assertEqual([value for _, value in buckets], sorted(v for _, v in buckets))
        self.assertGreater(after[("pgpool_tw_pool_query_duration_seconds_sum", with_node)], 0)
        self.assertIn(("pgpool_tw_pool_wait_duration_seconds_count", with_node), after)

    def test_session_mode(self) -> Deferred[Any]:
        service, user, db = self.start()
        return self.check_counts(service, user, db)

    def test_transaction_mode_on_the_lane(self) -> Deferred[Any]:
        service, user, db = self.start(pool_mode="transaction", default_pool_size=2)
        return self.check_counts(service, user, db)

    @inlineCallbacks
    def test_pinned_clients_by_reason(self) -> Steps:
        service, user, db = self.start(pool_mode="transaction", default_pool_size=2)
        port = service.metrics_port
        assert port is not None

        def run() -> dict[Any, float]:
            dsn = self.dsn(service, user, db)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("listen somewhere")
                return scrape(port)

        got = yield self.in_thread(run)
        self.assertEqual(got[("pgpool_tw_pinned_clients", (("reason", "listen"),))], 1)

    @inlineCallbacks
    def test_only_metrics_is_served(self) -> Steps:
        service, _, _ = self.start()
        port = service.metrics_port
        assert port is not None

        def run() -> int:
            try:
                scrape(port, "/other")
            except urllib.error.HTTPError as e:
                return e.code
            return 200

        code = yield self.in_thread(run)
        self.assertEqual(code, 404)
