"""pgbench through ``twistd -n pgpool`` in transaction mode: 500 clients on 10 servers.

Each protocol (``-M simple``, ``extended``, ``prepared``) runs 500 clients for a few
seconds with zero failed transactions, while PostgreSQL itself is asked how many server
connections the pooler holds: never more than ``default_pool_size``.  ``-M prepared``
is the case PgBouncer 1.18's transaction mode fails ("prepared statement "P_0" already
exists"): here each client's statements follow it from server to server.
"""

from __future__ import annotations

import re
import threading
from typing import ClassVar, Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pooler import PoolerProcess, pgbench_database
from tests.support import shared_postgres, skip_unless_postgres

_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)

CLIENTS = 500
SERVERS = 10


class TransactionPgbenchTests(SynchronousTestCase):
    _initialised: ClassVar[Optional[tuple[str, str]]] = None

    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()
        self.pooler = PoolerProcess(
            self,
            self.pg,
            {
                "pool_mode": "transaction",
                "default_pool_size": SERVERS,
                "max_client_conn": CLIENTS + 10,
            },
        ).start()

    def pgbench_db(self) -> tuple[str, str]:
        cls = type(self)
        if cls._initialised is None:
            cls._initialised = pgbench_database(self.pooler, self.pg, "e2e_tx")
        return cls._initialised

    def servers_of(self, role: str) -> int:
        out = self.pg.psql(
            "select count(*) from pg_stat_activity where usename = :'u'", variables={"u": role}
        )
        return int(out.strip())

    def run_pgbench(self, *args: str) -> None:
        role, db = self.pgbench_db()
        most = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.2):
                most[0] = max(most[0], self.servers_of(role))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            proc = self.pooler.pgbench(role, db, "-T", "4", "-c", str(CLIENTS), "-j", "2", *args)
        finally:
            done.set()
            watcher.join()
        report = f"pgbench {args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
        report += f"pooler log tail:\n{self.pooler.log_tail()}"
        self.assertEqual(proc.returncode, 0, report)
        failed = _FAILED.search(proc.stdout)
        processed = _PROCESSED.search(proc.stdout)
        self.assertIsNotNone(failed, report)
        self.assertIsNotNone(processed, report)
        assert failed is not None and processed is not None
        self.assertEqual(int(failed.group(1)), 0, report)
        self.assertGreater(int(processed.group(1)), 0, report)
        self.assertGreater(most[0], 0, "the watcher never saw a server")
        self.assertLessEqual(most[0], SERVERS, f"{most[0]} server connections at once")

    def test_simple_protocol(self) -> None:
        self.run_pgbench("-M", "simple")

    def test_extended_protocol(self) -> None:
        self.run_pgbench("-M", "extended")

    def test_prepared_statements(self) -> None:
        self.run_pgbench("-M", "prepared")
