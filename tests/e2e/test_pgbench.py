"""pgbench through a real ``twistd -n pgpool``: simple, extended and prepared protocols."""

from __future__ import annotations

import re
from typing import ClassVar, Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pooler import PoolerProcess, pgbench_database
from tests.support import shared_postgres, skip_unless_postgres

_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_TPS = re.compile(r"^tps = (\d+(?:\.\d+)?) ", re.MULTILINE)


class PgbenchTests(SynchronousTestCase):
    # role and database initialised by `pgbench -i` once for the class, on first use.
    _initialised: ClassVar[Optional[tuple[str, str]]] = None

    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()
        self.pooler = PoolerProcess(self, self.pg).start()

    def pgbench_db(self) -> tuple[str, str]:
        """The class's (role, database), created and `pgbench -i -s 1`-ed through the pooler."""
        cls = type(self)
        if cls._initialised is None:
            cls._initialised = pgbench_database(self.pooler, self.pg, "e2e_bench")
        return cls._initialised

    def run_pgbench(self, *args: str) -> None:
        role, db = self.pgbench_db()
        proc = self.pooler.pgbench(role, db, "-T", "5", "-c", "8", *args)
        report = f"pgbench {args} exited {proc.returncode}:\n{proc.stdout}\n"
        report += f"pooler log tail:\n{self.pooler.log_tail()}"
        self.assertEqual(proc.returncode, 0, report)
        failed = _FAILED.search(proc.stdout)
        self.assertIsNotNone(failed, report)
        assert failed is not None
        self.assertEqual(int(failed.group(1)), 0, report)
        processed = _PROCESSED.search(proc.stdout)
        self.assertIsNotNone(processed, report)
        assert processed is not None
        self.assertGreater(int(processed.group(1)), 0, report)
        tps = _TPS.search(proc.stdout)
        self.assertIsNotNone(tps, report)
        assert tps is not None
        self.assertGreater(float(tps.group(1)), 0.0, report)

    def test_simple_protocol(self) -> None:
        """pgbench -M simple with 8 clients runs 5 s with no failed transactions."""
        self.run_pgbench("-j", "2", "-M", "simple")

    def test_extended_protocol(self) -> None:
        """pgbench -M extended with 8 clients runs 5 s with no failed transactions."""
        self.run_pgbench("-j", "2", "-M", "extended")

    def test_prepared_protocol(self) -> None:
        """pgbench -M prepared with 8 clients runs 5 s with no failed transactions."""
        self.run_pgbench("-j", "2", "-M", "prepared")

    def test_connection_per_transaction(self) -> None:
        """pgbench -C -S (a new connection per transaction) runs 5 s with no failures."""
        self.run_pgbench("-C", "-S")
