"""Tests for the order in which ``bench/bench.py`` runs its targets within a workload."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench")


def _bench() -> Any:
    """bench.py imports its siblings by their bare names, as a script does."""
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    return importlib.import_module("bench")


class RunOrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        bench = _bench()
        self.run_order = bench.run_order
        self.targets = list(bench.TARGETS)

    def test_every_target_runs_once_per_workload(self) -> None:
        for index in range(12):
            self.assertEqual(sorted(self.run_order(self.targets, index)), sorted(self.targets))

    def test_pgpool_tw_runs_next_to_pgbouncer_session_on_alternate_sides(self) -> None:
        sides = []
        for index in range(6):
            order = self.run_order(self.targets, index)
            gap = order.index("pgpool-tw") - order.index("pgbouncer-session")
            self.assertIn(gap, (1, -1), order)
            sides.append(gap)
        self.assertEqual(sides, [1, -1, 1, -1, 1, -1])

    def test_the_first_target_moves_from_workload_to_workload(self) -> None:
        firsts = [self.run_order(self.targets, index)[0] for index in range(len(self.targets) - 1)]
        self.assertEqual(len(set(firsts)), len(firsts), firsts)

    def test_without_the_pair_the_order_is_a_plain_rotation(self) -> None:
        self.assertEqual(self.run_order(["direct", "pgpool-tw"], 1), ["pgpool-tw", "direct"])
        self.assertEqual(self.run_order([], 0), [])
