"""Tests for the order in which ``bench/bench.py`` runs its targets within a workload
(routed workloads too), and for how ``bench/workloads.py`` combines a target's two runs
into one result."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench")


def _bench(module: str = "bench") -> Any:
    """bench.py imports its siblings by their bare names, as a script does."""
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    return importlib.import_module(module)


PAIR = ("pgbouncer-session", "pgpool-tw")


class RunOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        bench = _bench()
        self.run_order = bench.run_order
        self.targets = list(_bench("targets").TARGETS)

    def test_the_pair_runs_twice_and_every_other_target_once(self) -> None:
        """The pair runs twice per workload, every other target once."""
        for index in range(12):
            order = self.run_order(self.targets, index)
            expected = self.targets + list(PAIR)
            if "pgpool-tw-transaction" in self.targets and "pgbouncer-transaction" in self.targets:
                expected += ["pgbouncer-transaction", "pgpool-tw-transaction"]
            self.assertEqual(sorted(order), sorted(expected), order)

    def test_the_pair_runs_back_to_back_in_abba_then_baab_order(self) -> None:
        """The pair runs back to back, ABBA with PgBouncer outside, then BAAB, by turns."""
        blocks = []
        for index in range(4):
            order = self.run_order(self.targets, index)
            at = min(order.index(name) for name in PAIR)
            block = order[at : at + 4]
            self.assertEqual(block, block[::-1], order)  # A B B A
            blocks.append(block[0])
        self.assertEqual(blocks, ["pgbouncer-session", "pgpool-tw"] * 2)

    def test_the_first_target_moves_from_workload_to_workload(self) -> None:
        """No target runs first in two workloads until each has had its turn."""
        rotating = len(self.targets) - 1 - ("pgpool-tw-transaction" in self.targets)
        firsts = [self.run_order(self.targets, index)[0] for index in range(rotating)]
        self.assertEqual(len(set(firsts)), len(firsts), firsts)

    def test_the_transaction_pair_runs_abba_then_baab(self) -> None:
        pair = ["pgbouncer-transaction", "pgpool-tw-transaction"]
        self.assertEqual(self.run_order(pair, 0), [pair[0], pair[1], pair[1], pair[0]])
        self.assertEqual(self.run_order(pair, 1), [pair[1], pair[0], pair[0], pair[1]])

    def test_without_the_pair_the_order_is_a_plain_rotation(self) -> None:
        """Without both of the pair, the targets rotate and none runs twice."""
        self.assertEqual(self.run_order(["direct", "pgpool-tw"], 1), ["pgpool-tw", "direct"])
        self.assertEqual(self.run_order([], 0), [])


class CombineTests(SynchronousTestCase):
    def setUp(self) -> None:
        workloads = _bench("workloads")
        self.combine = workloads.combine
        self.RunResult = workloads.RunResult

    def _result(self, tps: float, processed: int, **more: Any) -> Any:
        fields = {"exit_status": 0, "failed": 0, "latency_ms": 16 / tps * 1000}
        fields.update(more)
        return self.RunResult("S1", "pgpool-tw", tps=tps, processed=processed, **fields)

    def test_one_run_is_its_own_result(self) -> None:
        """A target that ran once keeps its run as its result."""
        run = self._result(40000.0, 320000)
        self.assertIs(self.combine([run]), run)

    def test_two_runs_give_mean_rates_and_summed_counts(self) -> None:
        """Two runs give the mean TPS and latency, counts and CPU summed, the runs kept."""
        first = self._result(40000.0, 320000, cpu_us=2_600_000.0, servers=16, wall_s=8.0)
        second = self._result(42000.0, 336000, cpu_us=2_700_000.0, servers=15, wall_s=8.1)
        merged = self.combine([first, second])
        self.assertEqual(merged.tps, 41000.0)
        self.assertAlmostEqual(merged.latency_ms, (0.4 + 16 / 42) / 2)
        self.assertEqual(merged.processed, 656000)
        self.assertEqual(merged.failed, 0)
        self.assertEqual(merged.cpu_us_per_tx, 5_300_000.0 / 656000)
        self.assertEqual(merged.servers, 15)
        self.assertAlmostEqual(merged.wall_s, 16.1)
        self.assertEqual(merged.samples, [first, second])
        self.assertTrue(merged.ok)

    def test_one_failed_run_fails_the_whole(self) -> None:
        """A failed run makes the combined result fail, with its error and counts."""
        good = self._result(40000.0, 320000)
        bad = self._result(41000.0, 328000, failed=3, exit_status=2, error="pgbench: error: boom")
        merged = self.combine([good, bad])
        self.assertFalse(merged.ok)
        self.assertEqual((merged.failed, merged.exit_status), (3, 2))
        self.assertEqual(merged.error, "pgbench: error: boom")

    def test_a_figure_one_run_lacks_is_lacking_in_the_whole(self) -> None:
        """A run killed before its summary leaves the combined figures empty."""
        killed = self.RunResult("S1", "pgpool-tw", exit_status=None, timed_out=True, error="hung")
        merged = self.combine([self._result(40000.0, 320000), killed])
        self.assertIsNone(merged.tps)
        self.assertIsNone(merged.processed)
        self.assertIsNone(merged.exit_status)
        self.assertTrue(merged.timed_out)
        self.assertFalse(merged.ok)


class RoutedOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        bench = _bench()
        self.routed_order = bench.routed_order
        self.order_of = bench.order_of
        self.workloads = _bench("workloads").WORKLOADS
        self.targets = list(_bench("targets").TARGETS)

    def test_only_routing_targets_run_each_twice_in_a_palindrome(self) -> None:
        """Routed: only the poolers that route run, each twice, the order a palindrome."""
        for index in range(6):
            order = self.routed_order(self.targets, index, False)
            self.assertEqual(order, order[::-1], order)
            self.assertEqual(
                sorted(order),
                sorted(["pgpool2", "pgpool-tw", "pgpool-tw-pure", "pgpool-tw-pypy"] * 2),
            )

    def test_single_backend_pgpool_tw_joins_the_select_only_ones(self) -> None:
        """With single: pgpool-tw-single runs twice too, only when pgpool-tw is chosen."""
        order = self.routed_order(["pgpool-tw", "pgpool2"], 0, True)
        self.assertEqual(order, order[::-1], order)
        self.assertEqual(sorted(order), sorted(["pgpool-tw", "pgpool-tw-single", "pgpool2"] * 2))
        self.assertEqual(self.routed_order(["pgpool2"], 0, True), ["pgpool2", "pgpool2"])

    def test_the_first_routed_target_moves_from_workload_to_workload(self) -> None:
        """The rotation gives each target the first place by turns."""
        targets = ["pgpool2", "pgpool-tw"]
        firsts = [self.routed_order(targets, index, True)[0] for index in range(3)]
        self.assertEqual(len(set(firsts)), 3, firsts)

    def test_no_routing_target_leaves_a_routed_workload_empty(self) -> None:
        """direct and PgBouncer do not route: a routed workload has nothing to run on them."""
        self.assertEqual(self.routed_order(["direct", "pgbouncer-session"], 0, True), [])

    def test_order_of_picks_the_order_by_the_workload(self) -> None:
        """S-workloads keep run_order; R-workloads take routed_order."""
        targets = ["pgbouncer-session", "pgpool-tw"]
        self.assertEqual(
            self.order_of(self.workloads["S1"], targets, 0),
            ["pgbouncer-session", "pgpool-tw", "pgpool-tw", "pgbouncer-session"],
        )
        self.assertEqual(
            self.order_of(self.workloads["R1"], targets, 0),
            ["pgpool-tw", "pgpool-tw-single", "pgpool-tw-single", "pgpool-tw"],
        )
        self.assertEqual(self.order_of(self.workloads["R2"], targets, 0), ["pgpool-tw"] * 2)
