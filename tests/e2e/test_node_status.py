"""twistd pgpool keeps a detached node down across a restart (pgpool_status), and -D
forgets it, as pgpool-II does."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.devdb import free_port
from tests.e2e.pooler import PoolerProcess
from tests.support import shared_postgres, skip_unless_postgres


class NodeStatusAcrossRestarts(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()

    def test_down_stays_down_and_discard_status_tries_again(self) -> None:
        """Node 1 answers nobody: the health check detaches it (node 0 carries on). After
        a restart it is still down without a try; with -D it is tried, and detached again."""
        settings = {
            "backend_clustering_mode": "raw",
            "backend_hostname1": "127.0.0.1",
            "backend_port1": free_port(),  # nothing listens there
            "health_check_period": 1,
            "health_check_user": "postgres",
            "connect_timeout": 1000,
        }
        first = PoolerProcess(self, self.pg, settings).start()
        first.wait_for_log("failover: node 1 (127.0.0.1:", timeout=30)
        status = os.path.join(first.dir, "pgpool_status")
        with open(status, encoding="utf-8") as handle:
            self.assertEqual(handle.read(), "up\ndown\n")
        self.assertEqual(first.psql_ok("postgres", "postgres", "select 1").strip(), "1")

        first.restart()
        first.wait_for_log("is down in", timeout=10)
        self.assertIn("it stays detached (-D forgets)", first.log_text())
        self.assertEqual(first.psql_ok("postgres", "postgres", "select 1").strip(), "1")
        first.stop()
        self.assertNotIn("failover: node 1", first.log_text())

        first.restart(["-D"])
        first.wait_for_log("failover: node 1 (127.0.0.1:", timeout=30)
        self.assertNotIn("is down in", first.log_text())
