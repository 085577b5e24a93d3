"""pgpool_tw.cluster: nodes with role and status, the primary, and the nodes-not-used warning."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.cluster import (
    DOWN,
    PRIMARY,
    UNKNOWN,
    UP,
    WAITING,
    Cluster,
    settings_report,
)
from pgpool_tw.config.settings import Config, parse_config

THREE = (
    "backend_hostname2 = 'db2'\nbackend_port2 = 5434\nbackend_weight2 = 0.5\n"
    "backend_hostname0 = 'db0'\nbackend_flag0 = DISALLOW_TO_FAILOVER\n"
    "backend_hostname1 = '/run/pg'\nbackend_flag1 = 'ALWAYS_PRIMARY'\n"
)


class ClusterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cluster = Cluster.from_config(parse_config(THREE))

    def test_nodes_in_index_order(self) -> None:
        """Iteration gives every node by index, with address, weight and flag."""
        seen = [(n.index, n.address, n.weight, n.flag) for n in self.cluster]
        self.assertEqual(
            seen,
            [
                (0, "db0:5432", 1.0, "DISALLOW_TO_FAILOVER"),
                (1, "/run/pg/.s.PGSQL.5432", 1.0, "ALLOW_TO_FAILOVER|ALWAYS_PRIMARY"),
                (2, "db2:5434", 0.5, "ALLOW_TO_FAILOVER"),
            ],
        )
        self.assertEqual(len(self.cluster), 3)

    def test_primary_is_lowest_node(self) -> None:
        """The lowest-numbered node is the primary; the others' role is unknown."""
        primary = self.cluster.primary
        assert primary is not None
        self.assertEqual((primary.index, primary.role), (0, PRIMARY))
        self.assertEqual([n.role for n in self.cluster], [PRIMARY, UNKNOWN, UNKNOWN])
        self.assertEqual(primary.backend, parse_config(THREE).primary_backend)

    def test_lookup_by_index(self) -> None:
        """A node is found by its N; a missing N is a KeyError, or None from get()."""
        self.assertEqual(self.cluster[2].address, "db2:5434")
        self.assertRaises(KeyError, self.cluster.__getitem__, 3)
        self.assertIsNone(self.cluster.get(3))

    def test_status_starts_waiting_and_changes(self) -> None:
        """Every node starts waiting; a status set later is kept, an unknown word refused."""
        self.assertEqual({n.status for n in self.cluster}, {WAITING})
        self.cluster.set_status(0, UP)
        self.cluster.set_status(2, DOWN)
        self.assertEqual([n.status for n in self.cluster], [UP, WAITING, DOWN])
        self.assertRaises(ValueError, self.cluster.set_status, 1, "sleeping")

    def test_empty_cluster(self) -> None:
        """A configuration without nodes has no primary and no warning."""
        cluster = Cluster.from_config(Config())
        self.assertIsNone(cluster.primary)
        self.assertEqual(list(cluster), [])
        self.assertIsNone(cluster.not_used_warning())


class WarningTests(SynchronousTestCase):
    def test_one_node_no_warning(self) -> None:
        """A single node is fully used: no warning."""
        config = parse_config("backend_hostname0 = a\n")
        self.assertIsNone(Cluster.from_config(config).not_used_warning())

    def test_more_nodes_one_line(self) -> None:
        """More nodes give one line naming them, the node used, and an ALWAYS_PRIMARY flag."""
        line = Cluster.from_config(parse_config(THREE)).not_used_warning()
        self.assertEqual(
            line,
            "pgpool.conf: backend nodes 1 (/run/pg/.s.PGSQL.5432), 2 (db2:5434) not used yet: "
            "every session goes to node 0 (db0:5432) until routing, load balancing and "
            "failover exist; backend_flag1 ALWAYS_PRIMARY is not followed yet",
        )

    def test_settings_report_once(self) -> None:
        """The start report lists each warning once; a reload of the same file says nothing."""
        text = THREE + "bogus = 1\nload_balance_mode = on\n"
        config = parse_config(text)
        lines = settings_report(config)
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("unknown setting 'bogus'", lines[0])
        self.assertIn("backend nodes 1", lines[1])
        self.assertIn("load balancing: load_balance_mode, backend_weight2", lines[2])
        self.assertEqual(settings_report(parse_config(text), config), [])
        fewer = parse_config(text.replace("backend_hostname2 = 'db2'", ""))
        again = settings_report(fewer, config)
        # backend_port2 and backend_weight2 now belong to no node, and the nodes line changed.
        self.assertEqual(len(again), 3, again)
        self.assertIn("backend_port2 ignored", again[0])
        self.assertIn("backend node 1 (", again[2])
