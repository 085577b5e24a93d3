"""Transaction pooling through a real primary and a real streaming replica.

A transaction-mode client's autocommit reads run on its load-balancing node, everything
else on the primary; where a statement ran is read from the server itself (``SHOW port``).
The replication check runs once (sr_check_period = 0), so a read_your_writes wait never
ends within a test: after a write, reads stay on the primary.
"""

from __future__ import annotations

from typing import Any

import psycopg
from twisted.internet import defer

from tests.integration.test_routing import RoutingCase, _thread

TX = {"pool_mode": "transaction", "default_pool_size": 2}


class TransactionRouting(RoutingCase):
    @defer.inlineCallbacks
    def test_reads_on_the_replica_writes_and_transactions_on_the_primary(self) -> Any:
        service = self.start_pooler(read_your_writes=False, **TX)
        user, db = self.database()

        def work() -> dict[str, Any]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                reads = {self._port(conn) for _ in range(5)}
                conn.execute("CREATE TABLE t (id int)")
                write = self._port(conn, "INSERT INTO t VALUES (1) RETURNING inet_server_port()")
                conn.execute("BEGIN")
                in_tx = self._port(conn)
                conn.execute("COMMIT")
                after = self._port(conn)
                return {"reads": reads, "write": write, "in_tx": in_tx, "after": after}

        got = yield _thread(work)
        self.assertEqual(got["reads"], {self.replica.port})
        self.assertEqual(got["write"], self.primary.port)
        self.assertEqual(got["in_tx"], self.primary.port)
        self.assertEqual(got["after"], self.replica.port)

    @defer.inlineCallbacks
    def test_read_your_writes_keeps_reads_on_the_primary_after_a_write(self) -> Any:
        service = self.start_pooler(**TX)
        user, db = self.database()

        def work() -> dict[str, Any]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                before = self._port(conn)
                conn.execute("CREATE TABLE t (id int)")
                conn.execute("INSERT INTO t VALUES (1)")
                seen = conn.execute("SELECT count(*), inet_server_port() FROM t").fetchone()
                assert seen is not None
                return {"before": before, "seen": seen[0], "where": seen[1]}

        got = yield _thread(work)
        self.assertEqual(got["before"], self.replica.port)
        self.assertEqual(got["seen"], 1)
        self.assertEqual(got["where"], self.primary.port)

    @defer.inlineCallbacks
    def test_prepared_statements_follow_the_client_between_nodes(self) -> Any:
        service = self.start_pooler(read_your_writes=False, **TX)
        user, db = self.database()

        def work() -> list[Any]:
            dsn = self.dsn(service, user, db)
            with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
                out = []
                for number in range(4):
                    row = conn.execute("SELECT %s::int * 2, inet_server_port()", (number,))
                    out.append(row.fetchone())
                return out

        got = yield _thread(work)
        self.assertEqual([row[0] for row in got], [0, 2, 4, 6])
        self.assertEqual({row[1] for row in got}, {self.replica.port})
