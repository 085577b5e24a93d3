"""A rolling restart under pgbench: two ``twistd -n pgpool`` on one port (so_reuseport),
the first drained by SIGUSR2 while pgbench reconnects for every transaction."""

from __future__ import annotations

import re
import signal
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.devdb import client_env, pg_bin
from tests.e2e.pooler import CLIENT_TIMEOUT, PoolerProcess, pgbench_database
from tests.support import shared_postgres, skip_unless_postgres

_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)

REUSEPORT = ["so_reuseport = on", "drain_timeout = 30"]


class RollingRestartTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()

    def test_drain_one_pooler_while_another_takes_the_port(self) -> None:
        """pgbench -C through pooler A; B binds A's port, A drains (SIGUSR2) and exits:
        pgbench ends with status 0 and no failed transaction."""
        first = PoolerProcess(self, self.pg, raw_lines=REUSEPORT).start()
        role, db = pgbench_database(first, self.pg, "e2e_roll")
        argv = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(first.port), "-U", role]
        argv += ["-C", "-c", "4", "-j", "2", "-T", "8", db]
        bench = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=client_env(),
        )
        self.addCleanup(_reap, bench)
        time.sleep(1.5)  # pgbench is under way on the first pooler
        second = PoolerProcess(self, self.pg, port=first.port, raw_lines=REUSEPORT).launch()
        second.wait_for_log("pgpool-tw listening on", timeout=15)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGUSR2)
        status = first.wait_exit(40)
        out, _ = bench.communicate(timeout=CLIENT_TIMEOUT)
        report = (
            f"pgbench exited {bench.returncode}:\n{out}\n"
            f"first pooler's log:\n{first.log_tail()}\nsecond's:\n{second.log_tail()}"
        )
        self.assertEqual(status, 0, report)
        self.assertIn("drain shutdown", first.log_text(), report)
        self.assertEqual(bench.returncode, 0, report)
        failed = _FAILED.search(out)
        self.assertIsNotNone(failed, report)
        assert failed is not None
        self.assertEqual(int(failed.group(1)), 0, report)
        processed = _PROCESSED.search(out)
        assert processed is not None, report
        self.assertGreater(int(processed.group(1)), 0, report)
        # The second pooler served the rest: it is the one listening now.
        self.assertTrue(second.alive())
        self.assertEqual(second.psql_ok(role, db, "select count(*) > 0 from pgbench_history"), "t")


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
