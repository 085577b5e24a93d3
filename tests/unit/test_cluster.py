"""pgpool_tw.cluster: nodes with role and status, the primary, and the nodes-not-used warning."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.cluster import (
    DOWN,
    MAIN,
    PRIMARY,
    REPLICA,
    STANDBY,
    UNKNOWN,
    UP,
    WAITING,
    Cluster,
    settings_report,
)
from pgpool_tw.cluster.topology import RAW, Probe, decide
from pgpool_tw.config.settings import Config, parse_config

DOWN_PROBE = Probe(False)


def primary(lsn: int) -> Probe:
    return Probe(True, in_recovery=False, current_lsn=lsn)


def standby(lsn: int) -> Probe:
    return Probe(True, in_recovery=True, replay_lsn=lsn)


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


def _with(config: Config, mode: str, balance: bool) -> Config:
    """``config`` with the settings another branch adds (read by getattr until then)."""
    if hasattr(config, "clustering_mode"):
        changes: dict[str, Any] = {"clustering_mode": mode, "load_balance_mode": balance}
        return replace(config, **changes)
    object.__setattr__(config, "clustering_mode", mode)
    object.__setattr__(config, "load_balance_mode", balance)
    return config


def _backends(count: int) -> Config:
    return parse_config("".join(f"backend_hostname{i} = db{i}\n" for i in range(count)))


class CheckedTests(SynchronousTestCase):
    """What a round of checks changes (Cluster.apply)."""

    def setUp(self) -> None:
        self.cluster = Cluster.from_config(_backends(3), now=100.0)

    def test_before_any_check(self) -> None:
        """Until the first check the lowest node is primary and nothing is known."""
        self.assertFalse(self.cluster.checked)
        node = self.cluster[1]
        self.assertEqual((node.pg_role, node.pg_status), (UNKNOWN, UNKNOWN))
        self.assertIsNone(node.delay_bytes)
        self.assertEqual(node.last_status_change, 100.0)
        self.assertEqual(self.cluster.standbys, [])

    def test_a_primary_that_does_not_answer_stays_primary(self) -> None:
        """A round that cannot reach the primary is not a failover: writes stay there; a
        round where it answers in recovery moves the role."""
        backends = list(_backends(3).backends)
        self.cluster.apply(decide(backends, {0: standby(5), 1: primary(8), 2: standby(8)}), 1.0)
        self.cluster.apply(decide(backends, {0: standby(5), 1: DOWN_PROBE, 2: standby(8)}), 2.0)
        node = self.cluster.primary
        assert node is not None
        self.assertEqual((node.index, node.role, node.pg_status), (1, PRIMARY, "down"))
        self.cluster.apply(decide(backends, {0: primary(9), 1: standby(9), 2: standby(9)}), 3.0)
        node = self.cluster.primary
        assert node is not None
        self.assertEqual(node.index, 0)
        self.assertEqual(self.cluster[1].role, STANDBY)

    def test_primary_is_the_detected_one(self) -> None:
        """After a round, primary is the node the round found, with its delays."""
        probes = {0: standby(500), 1: primary(800), 2: DOWN_PROBE}
        lines = self.cluster.apply(decide(list(_backends(3).backends), probes), now=200.0)
        primary_node = self.cluster.primary
        assert primary_node is not None
        self.assertEqual(primary_node.index, 1)
        self.assertEqual([n.role for n in self.cluster], [STANDBY, PRIMARY, STANDBY])
        self.assertEqual([n.pg_status for n in self.cluster], ["up", "up", "down"])
        self.assertEqual(self.cluster[0].delay_bytes, 300)
        self.assertEqual(self.cluster.standbys, [self.cluster[0], self.cluster[2]])
        self.assertTrue(self.cluster.checked)
        self.assertEqual(
            lines,
            [
                "node 0 (db0:5432): role primary -> standby, pg_status unknown -> up",
                "node 1 (db1:5432): role unknown -> primary, pg_status unknown -> up",
                "node 2 (db2:5432): role unknown -> standby, pg_status unknown -> down",
            ],
        )
        self.assertEqual({n.last_status_change for n in self.cluster}, {200.0})

    def test_only_changes_are_reported(self) -> None:
        """The same verdict again says nothing and keeps last_status_change; a change does."""
        backends = list(_backends(3).backends)
        probes = {0: primary(800), 1: standby(700), 2: standby(800)}
        self.cluster.apply(decide(backends, probes), now=200.0)
        probes[1] = standby(790)
        self.assertEqual(self.cluster.apply(decide(backends, probes), now=300.0), [])
        self.assertEqual(self.cluster[1].last_status_change, 200.0)
        self.assertEqual(self.cluster[1].delay_bytes, 10)
        probes[2] = DOWN_PROBE
        lines = self.cluster.apply(decide(backends, probes), now=400.0)
        self.assertEqual(lines, ["node 2 (db2:5432): pg_status up -> down"])
        self.assertEqual(self.cluster[2].last_status_change, 400.0)

    def test_no_primary_found(self) -> None:
        """A round with no node out of recovery detects no primary; writes then go to
        pgpool-II's main node, the lowest-numbered node not down."""
        backends = list(_backends(3).backends)
        self.cluster.apply(decide(backends, {0: standby(1), 1: standby(1)}), now=1.0)
        self.assertIsNone(self.cluster.detected_primary)
        main = self.cluster.primary
        assert main is not None
        self.assertEqual((main.index, main.role), (0, STANDBY))
        self.cluster.set_status(0, DOWN)
        main = self.cluster.primary
        assert main is not None
        self.assertEqual(main.index, 1)
        for index in (1, 2):
            self.cluster.set_status(index, DOWN)
        self.assertIsNone(self.cluster.primary)

    def test_false_primary_logged_once(self) -> None:
        """A second node out of recovery is named once, not every round."""
        backends = list(_backends(3).backends)
        probes = {0: primary(1), 1: primary(1), 2: DOWN_PROBE}
        first = self.cluster.apply(decide(backends, probes), now=1.0)
        self.assertIn(
            "node 1 also not in recovery (a false primary): the primary is node 0; "
            "nothing is routed to 1",
            first,
        )
        self.assertEqual(self.cluster[1].role, UNKNOWN)
        self.assertEqual(self.cluster.apply(decide(backends, probes), now=2.0), [])

    def test_raw_mode_main_is_primary(self) -> None:
        """In raw mode the main node is where sessions go."""
        backends = list(_backends(3).backends)
        self.cluster.apply(decide(backends, {0: DOWN_PROBE, 1: standby(1)}, RAW), now=1.0)
        node = self.cluster.primary
        assert node is not None
        self.assertEqual((node.index, node.role), (1, MAIN))
        self.assertEqual([n.role for n in self.cluster.standbys], [REPLICA, REPLICA])

    def test_carry_over(self) -> None:
        """A cluster rebuilt by a reload keeps the old one's findings for the same address."""
        backends = list(_backends(3).backends)
        self.cluster.apply(decide(backends, {0: standby(1), 1: primary(5)}), now=1.0)
        self.cluster.set_status(1, UP, now=2.0)
        moved = parse_config(
            "backend_hostname0 = db0\nbackend_hostname1 = db1\n"
            "backend_hostname2 = elsewhere\nbackend_weight1 = 0.5\n"
        )
        rebuilt = Cluster.from_config(moved, now=3.0)
        rebuilt.carry_over(self.cluster)
        self.assertTrue(rebuilt.checked)
        self.assertEqual([n.role for n in rebuilt], [STANDBY, PRIMARY, UNKNOWN])
        self.assertEqual(rebuilt[1].status, UP)
        self.assertEqual(rebuilt[1].weight, 0.5)  # the new settings, the old findings
        self.assertEqual(rebuilt[2].last_status_change, 3.0)

    def test_set_status_moves_last_status_change(self) -> None:
        """A status change moves last_status_change; setting the same status does not."""
        self.cluster.set_status(0, UP, now=5.0)
        self.cluster.set_status(0, UP, now=6.0)
        self.assertEqual(self.cluster[0].last_status_change, 5.0)


class WarningTests(SynchronousTestCase):
    def test_one_node_no_warning(self) -> None:
        """A single node is fully used: no warning."""
        config = parse_config("backend_hostname0 = a\n")
        self.assertIsNone(Cluster.from_config(config).not_used_warning())

    def test_more_nodes_one_line_raw(self) -> None:
        """Raw mode: one line naming the nodes used only when the ones before are down, and
        that ALWAYS_PRIMARY means nothing there."""
        raw = parse_config(THREE + "backend_clustering_mode = 'raw'\n")
        line = Cluster.from_config(raw).not_used_warning()
        self.assertEqual(
            line,
            "pgpool.conf: backend nodes 1 (/run/pg/.s.PGSQL.5432), 2 (db2:5434) not used while "
            "node 0 (db0:5432) is up: every session goes to node 0, the first node that is up "
            "(clustering_mode raw); backend_flag1 ALWAYS_PRIMARY has no meaning in raw mode",
        )

    def test_streaming_replication_with_load_balancing(self) -> None:
        """Streaming replication with load_balance_mode on: no "not used" claim; what is
        said is where writes and reads go."""
        config = _with(parse_config(THREE), "streaming_replication", True)
        line = Cluster.from_config(config).not_used_warning()
        self.assertEqual(
            line,
            "pgpool.conf: streaming replication over backend nodes 0 (db0:5432), "
            "1 (/run/pg/.s.PGSQL.5432), 2 (db2:5434): writes go to the ALWAYS_PRIMARY node "
            "(backend_flag1), reads are load balanced over the standbys",
        )
        self.assertNotIn("not used", line or "")

    def test_streaming_replication_without_load_balancing(self) -> None:
        """load_balance_mode off: every session goes to the detected primary."""
        config = _with(
            parse_config("backend_hostname0 = a\nbackend_hostname1 = b\n"),
            "streaming_replication",
            False,
        )
        line = Cluster.from_config(config).not_used_warning()
        self.assertEqual(
            line,
            "pgpool.conf: streaming replication over backend nodes 0 (a:5432), 1 (b:5432): "
            "every session goes to the primary pg_is_in_recovery() finds (load_balance_mode "
            "is off)",
        )

    def test_settings_report_once(self) -> None:
        """The start report lists each warning once; a reload of the same file says nothing."""
        text = THREE + "bogus = 1\nuse_watchdog = on\nbackend_clustering_mode = raw\n"
        config = parse_config(text)
        lines = settings_report(config)
        self.assertEqual(len(lines), 3, lines)
        self.assertIn("unknown setting 'bogus'", lines[0])
        self.assertIn("backend nodes 1", lines[1])
        self.assertIn("watchdog: use_watchdog not used yet", lines[2])
        self.assertEqual(settings_report(parse_config(text), config), [])
        fewer = parse_config(text.replace("backend_hostname2 = 'db2'", ""))
        again = settings_report(fewer, config)
        # backend_port2 and backend_weight2 now belong to no node, and the nodes line changed.
        self.assertEqual(len(again), 3, again)
        self.assertIn("backend_port2 ignored", again[0])
        self.assertIn("backend node 1 (", again[2])


class FailoverStateTests(SynchronousTestCase):
    """What failover does to the nodes (Cluster.detach, attach, set_primary)."""

    def setUp(self) -> None:
        self.cluster = Cluster.from_config(_backends(3), now=100.0)
        backends = list(_backends(3).backends)
        self.cluster.apply(decide(backends, {0: primary(9), 1: standby(9), 2: standby(9)}), 1.0)

    def test_detached_primary_is_no_primary(self) -> None:
        """A detached primary is down and a standby; writes go to the main node (the
        lowest node not down), and a round cannot give the role back while it is down."""
        self.cluster.detach(0, now=5.0)
        node = self.cluster[0]
        self.assertEqual((node.status, node.role, node.last_status_change), (DOWN, STANDBY, 5.0))
        self.assertIsNone(self.cluster.detected_primary)
        main = self.cluster.primary
        assert main is not None
        self.assertEqual(main.index, 1)
        backends = list(_backends(3).backends)
        self.cluster.apply(decide(backends, {0: primary(9), 1: standby(9), 2: standby(9)}), 6.0)
        self.assertEqual(self.cluster[0].role, STANDBY)
        self.assertEqual(self.cluster[0].pg_role, PRIMARY)
        self.assertIsNone(self.cluster.detected_primary)

    def test_every_node_down_is_no_primary(self) -> None:
        for index in range(3):
            self.cluster.detach(index)
        self.assertIsNone(self.cluster.primary)
        self.assertIsNone(self.cluster.main)

    def test_attach_waits_as_a_standby(self) -> None:
        self.cluster.detach(2, now=5.0)
        self.cluster.attach(2, now=7.0)
        node = self.cluster[2]
        self.assertEqual((node.status, node.role, node.last_status_change), (WAITING, STANDBY, 7.0))

    def test_set_primary(self) -> None:
        self.cluster.set_primary(2)
        self.assertEqual([n.role for n in self.cluster], [STANDBY, STANDBY, PRIMARY])
        node = self.cluster.primary
        assert node is not None
        self.assertEqual(node.index, 2)

    def test_raw_mode_main_moves_on(self) -> None:
        cluster = Cluster.from_config(_with(_backends(3), RAW, False))
        cluster.apply(
            decide(list(_backends(3).backends), {0: UP_RAW, 1: UP_RAW, 2: UP_RAW}, RAW), 1.0
        )
        self.assertEqual([n.role for n in cluster], [MAIN, REPLICA, REPLICA])
        cluster.detach(0)
        self.assertEqual([n.role for n in cluster], [REPLICA, MAIN, REPLICA])
        node = cluster.primary
        assert node is not None
        self.assertEqual(node.index, 1)


UP_RAW = Probe(True, in_recovery=False)
