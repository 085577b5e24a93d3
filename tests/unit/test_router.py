"""cluster/router.py: whether sessions route, and each session's load-balancing node."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.cluster import Cluster
from pgpool_tw.cluster.router import choose_lb_node, read_by_weight, readable, routing_on
from pgpool_tw.config.settings import Config, parse_config

NODES = (
    "backend_hostname0 = 'db0'\nbackend_weight0 = 1\n"
    "backend_hostname1 = 'db1'\nbackend_weight1 = 1\n"
    "backend_hostname2 = 'db2'\nbackend_weight2 = 2\n"
)


def config(extra: str = "") -> Config:
    return parse_config(NODES + extra)


def fixed(*values: float) -> Any:
    """A random source that returns ``values`` in turn."""
    it = iter(values)
    return lambda: next(it)


class RoutingOnTests(SynchronousTestCase):
    def test_streaming_with_balancing_and_several_nodes(self) -> None:
        self.assertTrue(routing_on(config(), Cluster.from_config(config())))
        for extra in ("backend_clustering_mode = 'raw'\n", "load_balance_mode = off\n"):
            c = config(extra)
            self.assertFalse(routing_on(c, Cluster.from_config(c)), extra)
        one = parse_config("backend_hostname0 = 'db0'\n")
        self.assertFalse(routing_on(one, Cluster.from_config(one)))


class ChooseTests(SynchronousTestCase):
    def choose(
        self, extra: str = "", rng: Any = None, db: str = "d", app: str = "a", user: str = "u"
    ) -> int:
        c = config(extra)
        return choose_lb_node(c, Cluster.from_config(c), 0, db, app, user, rng or fixed(0.0))

    def test_weights_partition_the_unit_interval(self) -> None:
        """Weights 1, 1, 2 of 4: [0, .25) node 0, [.25, .5) node 1, [.5, 1) node 2."""
        got = [self.choose(rng=fixed(point)) for point in (0.0, 0.24, 0.25, 0.49, 0.5, 0.99)]
        self.assertEqual(got, [0, 0, 1, 1, 2, 2])

    def test_weight_zero_never_reads(self) -> None:
        got = {self.choose("backend_weight2 = 0\n", fixed(p / 10)) for p in range(10)}
        self.assertEqual(got, {0, 1})

    def test_a_down_node_is_not_chosen(self) -> None:
        c = config()
        cluster = Cluster.from_config(c)
        cluster.set_status(2, "down")
        got = {choose_lb_node(c, cluster, 0, "d", "a", "u", fixed(p / 10)) for p in range(10)}
        self.assertEqual(got, {0, 1})

    def test_redirect_lists_in_pgpool_ii_order(self) -> None:
        """app_name before database before user; the first matching entry wins."""
        lists = (
            "app_name_redirect_preference_list = 'psql:1'\n"
            "database_redirect_preference_list = 'sales.*:2,postgres:primary'\n"
            "user_redirect_preference_list = 'bob:standby'\n"
        )
        self.assertEqual(self.choose(lists, app="psql", db="sales1"), 1)
        self.assertEqual(self.choose(lists, app="other", db="sales1"), 2)
        self.assertEqual(self.choose(lists, app="other", db="postgres"), 0)
        # 'standby': a standby chosen by weight (node 1 of 1+2 at 0.0).
        self.assertEqual(self.choose(lists, app="x", db="y", user="bob"), 1)

    def test_redirect_weight_is_a_share(self) -> None:
        """db:2(0.3): node 2 for draws under 0.3, else the usual choice by weight."""
        extra = "database_redirect_preference_list = 'd:2(0.3)'\n"
        self.assertEqual(self.choose(extra, fixed(0.29)), 2)
        self.assertEqual(self.choose(extra, fixed(0.31, 0.0)), 0)

    def test_statement_level_picks_a_standby_for_the_session(self) -> None:
        extra = "statement_level_load_balance = on\n"
        got = {self.choose(extra, fixed(p / 10)) for p in range(10)}
        self.assertEqual(got, {1, 2})


class PerReadTests(SynchronousTestCase):
    def test_read_by_weight_against_the_primary(self) -> None:
        cluster = Cluster.from_config(config())
        self.assertTrue(read_by_weight(cluster, 0, 2, fixed(0.5)))  # 2 of 3
        self.assertFalse(read_by_weight(cluster, 0, 2, fixed(0.7)))

    def test_readable(self) -> None:
        cluster = Cluster.from_config(config())
        node = cluster[1]
        self.assertTrue(readable(node))
        self.assertFalse(readable(replace(node, lagging=True)))
        self.assertFalse(readable(replace(node, pg_status="down")))
        self.assertFalse(readable(None))


class PoolNodesTests(SynchronousTestCase):
    def test_rows_in_pgpool_ii_words(self) -> None:
        from pgpool_tw.cluster.show import POOL_NODES_COLUMNS, pool_nodes_rows

        cluster = Cluster.from_config(config(), now=0.0)
        cluster._nodes[1] = replace(
            cluster[1],
            role="standby",
            pg_role="standby",
            pg_status="up",
            delay_bytes=4096,
            delay_seconds=1.5,
            replication_state="streaming",
            replication_sync_state="async",
        )
        rows = pool_nodes_rows(cluster, 1, {0: 3, 1: 7})
        self.assertEqual(len(POOL_NODES_COLUMNS), 14)
        self.assertEqual([len(row) for row in rows], [14, 14, 14])
        self.assertEqual(rows[1][:4], ["1", "db1", "5432", "waiting"])
        self.assertEqual(
            rows[1][5:12], ["0.250000", "standby", "standby", "7", "true", "4096", "streaming"]
        )
        self.assertEqual(rows[0][8:11], ["3", "false", "0"])  # the primary has no delay
        by_time = pool_nodes_rows(cluster, 1, {}, by_time=True)
        self.assertEqual(by_time[1][10], "1.5 second")
