"""Client sessions through a real ``twistd -n pgpool``: psql, reuse, reset, failures."""

from __future__ import annotations

import psycopg
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.devdb import free_port
from tests.e2e.pooler import PoolerProcess, Setting
from tests.support import shared_postgres, skip_unless_postgres, unique_name

PID = "select pg_backend_pid()"


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()
        self.role = unique_name("e2e_u")
        self.db = unique_name("e2e_db")
        self.pg.create_role(self.role)
        self.pg.create_database(self.db, owner=self.role)

    def pooler(self, **settings: Setting) -> PoolerProcess:
        return PoolerProcess(self, self.pg, settings=settings).start()

    def test_psql_over_tcp_and_unix_socket(self) -> None:
        """psql answers `select 42` through the pooler over TCP and over its unix socket."""
        pooler = self.pooler()
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 42"), "42")
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 42", unix=True), "42")

    def test_server_connection_reused(self) -> None:
        """Two consecutive sessions for one role and database get the same server backend."""
        pooler = self.pooler()
        first = pooler.psql_ok(self.role, self.db, PID)
        second = pooler.psql_ok(self.role, self.db, PID)
        self.assertTrue(first.isdigit(), first)
        self.assertEqual(first, second)

    def test_session_state_reset_before_reuse(self) -> None:
        """SET, temp tables, prepared statements and an open transaction do not leak on reuse."""
        pooler = self.pooler()
        out = pooler.psql_ok(
            self.role,
            self.db,
            PID,
            "SET work_mem = '7MB'",
            "CREATE TEMP TABLE t(x int)",
            "PREPARE p AS SELECT 1",
            "BEGIN",
            "SELECT 1",
            "show work_mem",
        )
        lines = out.splitlines()
        # psql -c exits here with the transaction still open and no COMMIT.
        self.assertEqual(lines[-2:], ["1", "7MB"], out)
        first_pid = lines[0]
        out = pooler.psql_ok(
            self.role,
            self.db,
            PID,
            "show work_mem",
            "select count(*) from pg_class where relname = 't' and relpersistence = 't'",
            "select count(*) from pg_prepared_statements",
            # In a leaked transaction now() would be that transaction's start.
            "select now() = statement_timestamp()",
        )
        self.assertEqual(out.splitlines(), [first_pid, "4MB", "0", "0", "t"], out)

    def test_application_name_set_and_quoted_on_reuse(self) -> None:
        """A reused server connection takes each client's application_name, quoted exactly."""
        pooler = self.pooler()
        tricky = "it's \\ tricky"
        show = "show application_name"
        first = pooler.psql_ok(self.role, self.db, PID, show, env={"PGAPPNAME": "first"})
        first_pid, name = first.splitlines()
        self.assertEqual(name, "first")
        second = pooler.psql_ok(self.role, self.db, PID, show, env={"PGAPPNAME": tricky})
        self.assertEqual(second.splitlines(), [first_pid, tricky])
        # The reset puts the server back to its login name; the pooler must notice.
        third = pooler.psql_ok(self.role, self.db, PID, show, env={"PGAPPNAME": tricky})
        self.assertEqual(third.splitlines(), [first_pid, tricky])

    def test_postgres_database_never_pooled(self) -> None:
        """Sessions to the database `postgres` each get their own server backend."""
        pooler = self.pooler()
        first = pooler.psql_ok(self.role, "postgres", PID)
        second = pooler.psql_ok(self.role, "postgres", PID)
        self.assertTrue(first.isdigit() and second.isdigit(), (first, second))
        self.assertNotEqual(first, second)

    def test_backend_unreachable(self) -> None:
        """With no server at backend_port0, psql gets `could not connect to server` and host:port.

        The pooler keeps running and keeps accepting clients.
        """
        dead_port = free_port()
        pooler = self.pooler(backend_port0=dead_port)
        for _ in range(2):
            proc = pooler.psql(self.role, self.db, "select 1")
            self.assertNotEqual(proc.returncode, 0, proc.stdout)
            self.assertIn("could not connect to server", proc.stderr)
            self.assertIn(f"127.0.0.1:{dead_port}", proc.stderr)
        self.assertTrue(pooler.alive(), pooler.log_tail())
        self.assertTrue(pooler.accepts())

    def test_server_killed_mid_session(self) -> None:
        """A server terminated under a session fails its next query; a new session works."""
        pooler = self.pooler()
        dsn = f"host=127.0.0.1 port={pooler.port} user={self.role} dbname={self.db}"
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.addCleanup(conn.close)
        row = conn.execute(PID).fetchone()
        assert row is not None
        pid = int(row[0])
        # The second argument waits (ms) until the backend has really gone.
        out = self.pg.psql(f"select pg_terminate_backend({pid}, 10000)").strip()
        self.assertEqual(out, "t")
        with self.assertRaises(psycopg.OperationalError):
            conn.execute("select 1")
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as again:
            row = again.execute(PID).fetchone()
        assert row is not None
        self.assertNotEqual(int(row[0]), pid)
        self.assertTrue(pooler.alive(), pooler.log_tail())
