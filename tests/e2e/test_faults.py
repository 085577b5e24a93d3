"""scripts/faults' engine (pgpool_tw_dev/faults.py): the clean-service arithmetic on made-up
probe operations, its command line, and one real scenario, kill -9 of the standby under
load, through ``main()`` with short times."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.faults import FaultResult, Op, clean_service_after, main, outage
from tests.support import skip_unless_postgres

#: The fault, as the probes see it, at t = 10.
FAULT = 10.0


def ok(kind: str, start: float, took: float = 0.01) -> Op:
    return Op(kind, start, start + took)


def failed(kind: str, start: float, took: float = 0.01) -> Op:
    return Op(kind, start, start + took, "server closed the connection unexpectedly")


def steady(start: float, end: float) -> list[Op]:
    """A probe's read and write every 0.1 s from ``start`` to ``end``, all fine."""
    ops = []
    for step in range(round((end - start) * 10)):
        t = start + step / 10
        ops += [ok("read", t), ok("write", t + 0.02)]
    return ops


class CleanServiceTests(SynchronousTestCase):
    def test_nothing_went_wrong_clean_at_the_fault(self) -> None:
        """No failed or slow operation after the fault: clean service from the fault on."""
        self.assertEqual(clean_service_after(steady(5, 13), FAULT, 13.0), 0.0)

    def test_clean_from_the_end_of_the_last_failure(self) -> None:
        """The last failed operation's end starts clean service; earlier ones do not."""
        ops = steady(5, 10) + [failed("write", 10.5), failed("connect", 11.0, took=0.5)]
        ops += steady(11.6, 14)
        self.assertAlmostEqual(clean_service_after(ops, FAULT, 14.0) or 0, 1.5)

    def test_a_stall_counts_like_a_failure(self) -> None:
        """A write that waited 3 s and then succeeded: clean only from when it returned."""
        ops = steady(5, 10) + [ok("write", 10.2, took=3.0)] + steady(13.3, 16)
        self.assertAlmostEqual(clean_service_after(ops, FAULT, 16.0) or 0, 3.2)
        fast = steady(5, 10) + [ok("write", 10.2, took=0.1)] + steady(10.4, 13)
        self.assertEqual(clean_service_after(fast, FAULT, 13.0), 0.0)

    def test_not_clean_before_the_window_has_passed(self) -> None:
        ops = steady(5, 10) + [failed("read", 11.0)] + steady(11.1, 12.5)
        self.assertIsNone(clean_service_after(ops, FAULT, 12.5))
        self.assertAlmostEqual(clean_service_after(ops, FAULT, 13.1) or 0, 1.01)

    def test_needs_a_successful_read_and_write_after(self) -> None:
        """Two quiet seconds with only reads after the failure are not clean service."""
        ops = steady(5, 10) + [failed("write", 10.5)]
        ops += [ok("read", 10.6 + i / 10) for i in range(30)]
        self.assertIsNone(clean_service_after(ops, FAULT, 14.0))

    def test_an_operation_hanging_now_is_not_clean(self) -> None:
        ops = steady(5, 14)
        self.assertIsNone(clean_service_after(ops, FAULT, 14.0, in_flight=[12.0]))
        self.assertEqual(clean_service_after(ops, FAULT, 14.0, in_flight=[13.9]), 0.0)

    def test_outage_is_the_longest_gap_between_successes(self) -> None:
        ops = steady(5, 10) + [failed("write", 10.05), failed("write", 10.5)] + steady(12, 14)
        # The last write before the fault ended at 9.93; the next success at 12.03.
        self.assertAlmostEqual(outage(ops, "write", FAULT, 14.0), 2.1)
        self.assertAlmostEqual(outage(steady(5, 14), "read", FAULT, 14.0), 0.1)
        # No success after the fault: the gap runs to now.
        self.assertAlmostEqual(outage(steady(5, 10), "read", FAULT, 20.0), 10.09)


class CommandLineTests(SynchronousTestCase):
    def test_unknown_fault_is_refused(self) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            main(["--faults", "stop,unplug"])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn("unknown fault: unplug", err.getvalue())


def _processes_mentioning(texts: list[str]) -> list[str]:
    """Command lines of running processes that name any of ``texts``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(text in cmdline for text in texts):
            found.append(f"{entry}: {cmdline}")
    return found


class FaultsSmokeTests(SynchronousTestCase):
    def test_kill_standby_under_load(self) -> None:
        """kill -9 of the standby: one result with every figure, the errors add up, service
        comes back, the pooler detached node 1 (failover_command ran once for it), nothing
        was promoted, the pooler logged no traceback, and no process is left running."""
        skip_unless_postgres()
        out = io.StringIO()
        argv = ["--faults", "kill", "--targets", "standby", "--seconds", "2", "--observe", "3"]
        argv += ["--wait", "30"]
        with contextlib.redirect_stdout(out):
            code = main([*argv, "--json", "--quiet", "--keep"])
        results: list[dict[str, Any]] = json.loads(out.getvalue())
        self.assertEqual(len(results), 1, out.getvalue())
        result = results[0]
        if result["directory"]:
            self.addCleanup(shutil.rmtree, result["directory"], True)
        report = json.dumps(result, indent=1)
        # 1 when a pgbench client was left without an answer (pgbench_hung), else 0.
        self.assertEqual(code, 1 if result["pgbench_hung"] else 0, report)
        self.assertEqual(set(result), {f.name for f in FaultResult.__dataclass_fields__.values()})
        self.assertEqual((result["fault"], result["target"]), ("kill", "standby"))
        self.assertIsNotNone(result["clean_after"], report)
        self.assertEqual(
            result["errors"],
            result["probe_errors"] + result["pgbench_aborted"] + result["pgbench_failed"],
        )
        self.assertGreater(result["probe_ops"], 0, report)
        self.assertTrue(result["detached"], report)
        self.assertFalse(result["promoted"], report)
        self.assertEqual([row["status"] for row in result["pool_nodes"]], ["up", "down"], report)
        self.assertEqual(len(result["failover_calls"]), 1, report)
        self.assertTrue(result["failover_calls"][0].startswith("1 "), report)
        self.assertEqual(result["pooler_problems"], [], report)
        # Nothing left behind: no pooler on the kept conf, no server on either data dir.
        call = result["failover_calls"][0].split()
        data_dirs = [call[3], call[9]]  # %D (the standby's) and %R (the new main's)
        conf = os.path.join(result["directory"], "pgpool.conf")
        self.assertEqual(_processes_mentioning([conf, *data_dirs]), [])
