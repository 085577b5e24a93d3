"""``bench/bench.py`` end to end, small: direct, pgpool-tw (C relay) and pgpool-tw-pure
(the Python relay, as on PyPy), S1 and S3, a warm-up and two timed seconds each; and R1,
routed over a primary and a real streaming replica, through pgpool-tw and single-backend
pgpool-tw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pooler import client_env, make_temp_dir
from tests.support import skip_unless_postgres

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO_ROOT, "bench", "bench.py")
TARGETS = ("direct", "pgpool-tw", "pgpool-tw-pure")
WORKLOADS = ("S1", "S3")
CLIENTS = 16  # both workloads'
RUN_TIMEOUT = 600.0


def _bench(test: SynchronousTestCase, targets: str, workloads: str) -> tuple[list[Any], str]:
    """Run a 2-second bench at scale 1; its JSON runs and its output, once it exited 0."""
    out_dir = make_temp_dir(test, "pgpool-tw-bench-smoke-")
    out = os.path.join(out_dir, "run.md")
    argv = [sys.executable, BENCH, "--targets", targets]
    argv += ["--workloads", workloads, "--duration", "2", "--scale", "1"]
    argv += ["--no-memory", "--json", "--out", out]
    proc = subprocess.run(
        argv,
        cwd=out_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=client_env(),
        timeout=RUN_TIMEOUT,
    )
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    test.assertEqual(proc.returncode, 0, output)
    test.assertTrue(os.path.exists(out), output)
    with open(os.path.join(out_dir, "run.json"), encoding="utf-8") as f:
        runs: list[Any] = json.load(f)["runs"]
    return runs, output


class BenchSmokeTests(SynchronousTestCase):
    def test_small_run_completes_without_failed_transactions(self) -> None:
        """A 2 s bench run of S1 and S3 through direct and both relays exits 0, no failures."""
        skip_unless_postgres()
        runs, output = _bench(self, ",".join(TARGETS), ",".join(WORKLOADS))

        ran = sorted((run["workload"], run["target"]) for run in runs)
        self.assertEqual(ran, sorted((w, t) for w in WORKLOADS for t in TARGETS), output)
        for run in runs:
            where = f"{run['workload']} {run['target']}: {run}"
            self.assertEqual(run["exit_status"], 0, where)
            self.assertFalse(run["timed_out"], where)
            self.assertEqual(run["failed_transactions"], 0, where)
            self.assertGreater(run["transactions_processed"], 0, where)
            # The warm-up left a pooler holding a server for each of the 16 clients.
            expected = None if run["target"] == "direct" else CLIENTS
            self.assertEqual(run["servers_at_start"], expected, where)

    def test_routed_run_spreads_reads_over_primary_and_replica(self) -> None:
        """R1 through routed pgpool-tw and single-backend pgpool-tw: no failures, and the
        routed runs' transactions were committed on the replica as well as the primary,
        the single-backend ones on the primary alone."""
        skip_unless_postgres()
        runs, output = _bench(self, "pgpool-tw", "R1")

        by_target = {run["target"]: run for run in runs}
        self.assertEqual(sorted(by_target), ["pgpool-tw", "pgpool-tw-single"], output)
        for run in runs:
            where = f"{run['target']}: {run}"
            self.assertEqual(len(run["samples"]), 2, where)  # ABBA: each ran twice
            self.assertEqual(run["exit_status"], 0, where)
            self.assertEqual(run["failed_transactions"], 0, where)
            self.assertGreater(run["transactions_processed"], 0, where)
        primary, replica = by_target["pgpool-tw"]["node_commits"]
        self.assertGreater(replica, 0, output)
        self.assertGreater(primary, 0, output)
        primary, replica = by_target["pgpool-tw-single"]["node_commits"]
        self.assertGreater(primary, by_target["pgpool-tw-single"]["transactions_processed"])
        self.assertLess(replica, 100, output)  # our own stats queries, nothing of pgbench's
