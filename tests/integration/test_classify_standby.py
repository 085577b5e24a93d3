"""The classifier's verdicts against a real hot standby (the shared pg_basebackup -R replica).

A unit test can only say what the classifier answers; this one asks PostgreSQL whether the
answer is safe: what it sends to the standby (or to every node) must run there, and what it
keeps off the standby because the standby refuses it must really be refused there while the
primary runs it.
"""

from __future__ import annotations

from typing import Optional

import psycopg
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.checks.probe import FUNCTIONS_SQL
from pgpool_tw.cluster.classify import ROUTE_ALL, ROUTE_PRIMARY, ROUTE_STANDBY, Classifier
from tests.support import (
    shared_cluster,
    skip_unless_postgres,
    unique_name,
    wait_replica_caught_up,
)

SCHEMA = """
CREATE TABLE t (id int, a int, name text, b int); CREATE TABLE u (id int, a int);
CREATE TABLE pgbench_accounts (aid int, abalance int); CREATE SEQUENCE s;
CREATE FUNCTION get_user(int) RETURNS int LANGUAGE sql STABLE AS 'SELECT $1';
INSERT INTO t VALUES (1, 1, 'x', 1); INSERT INTO u VALUES (1, 1);
"""

# (statement, route): each must run on the standby.
READS = [
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;", ROUTE_STANDBY),
    ("select u.a from u join t on t.id = u.id", ROUTE_STANDBY),
    ("VALUES (1), (2)", ROUTE_STANDBY),
    ("TABLE t", ROUTE_STANDBY),
    ("with c as (select 1) select * from c", ROUTE_STANDBY),
    ("select count(*), lower(min(name)) from t", ROUTE_STANDBY),
    ("select now(), extract(epoch from now())", ROUTE_STANDBY),
    ("select get_user(1)", ROUTE_STANDBY),  # STABLE in this database's catalog
    ("SHOW work_mem", ROUTE_STANDBY),
    ("EXPLAIN SELECT * FROM t", ROUTE_STANDBY),
    ("EXPLAIN ANALYZE SELECT * FROM t", ROUTE_STANDBY),
    ("select 1; select 2 from u", ROUTE_STANDBY),
    ("EXPLAIN DELETE FROM t", ROUTE_STANDBY),  # without ANALYZE nothing runs
    ("EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)", ROUTE_STANDBY),
    ("EXPLAIN SELECT * FROM t FOR UPDATE", ROUTE_STANDBY),
    ("EXPLAIN SELECT nextval('s')", ROUTE_STANDBY),
    ("EXPLAIN CREATE TABLE z AS SELECT 1", ROUTE_STANDBY),
    ("EXPLAIN WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", ROUTE_STANDBY),
    ("COPY t TO STDOUT", ROUTE_STANDBY),
    ("COPY (SELECT * FROM t) TO STDOUT", ROUTE_STANDBY),
    # Kept off though the standby runs them (pgpool-II's rules: catalogs, conservative).
    ("select * from pg_class limit 1", ROUTE_PRIMARY),
    ("SET CONSTRAINTS ALL DEFERRED", ROUTE_PRIMARY),
    ("UNLISTEN ch", ROUTE_PRIMARY),
    ("BEGIN; LOCK t IN ROW EXCLUSIVE MODE", ROUTE_PRIMARY),
]
SESSION_STATE = [
    ("SET work_mem = '64MB'", ROUTE_ALL),
    ("RESET work_mem", ROUTE_ALL),
    ("SET search_path TO public", ROUTE_ALL),
    ("SET transaction_read_only = on", ROUTE_ALL),
    ("SET transaction_isolation = 'read committed'", ROUTE_ALL),
    ("DISCARD ALL", ROUTE_ALL),
    ("LOAD 'auto_explain'", ROUTE_ALL),
    ("BEGIN; LOCK t IN ACCESS SHARE MODE; LOCK t IN ROW SHARE MODE; COMMIT", ROUTE_ALL),
    (
        "BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION READ ONLY;"
        " SAVEPOINT a; RELEASE SAVEPOINT a; SAVEPOINT b; ROLLBACK TO SAVEPOINT b; COMMIT",
        ROUTE_ALL,
    ),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", ROUTE_ALL),
    ("START TRANSACTION; ROLLBACK", ROUTE_ALL),
    ("BEGIN; END", ROUTE_ALL),
    ("BEGIN; ABORT", ROUTE_ALL),
    ("PREPARE p AS SELECT * FROM t WHERE a = $1", ROUTE_ALL),
    ("PREPARE q (int) AS INSERT INTO t VALUES ($1)", ROUTE_ALL),
    ("PREPARE p AS SELECT 1; DEALLOCATE p", ROUTE_ALL),
    ("DEALLOCATE ALL", ROUTE_ALL),
]
# The standby refuses these by design; the primary runs them.
REFUSED = [
    ("SET transaction_read_only = off", ROUTE_PRIMARY),
    ("BEGIN; SET TRANSACTION READ WRITE", ROUTE_PRIMARY),
    ("BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1", ROUTE_PRIMARY),
    ("select nextval('s')", ROUTE_PRIMARY),
    ("select * from t for update", ROUTE_PRIMARY),
    ("with x as (delete from t returning *) select * from x", ROUTE_PRIMARY),
    ("select * into t2 from t", ROUTE_PRIMARY),
    ("CREATE TEMP TABLE x (a int)", ROUTE_PRIMARY),
    ("NOTIFY ch", ROUTE_PRIMARY),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", ROUTE_PRIMARY),
    ("COPY t FROM STDIN", ROUTE_PRIMARY),
    ("LISTEN ch", ROUTE_PRIMARY),
    # The standby refuses these BEGINs: the transaction runs on the primary alone.
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", ROUTE_PRIMARY),
    ("BEGIN READ WRITE", ROUTE_PRIMARY),
]


def _run(conn: psycopg.Connection[tuple[object, ...]], text: str) -> Optional[str]:
    """Run ``text`` by the simple protocol (several statements allowed); its error's first
    line, or None when it ran."""
    try:
        if text.startswith("COPY"):
            with conn.cursor().copy(text) as copy:
                if "FROM STDIN" in text:
                    copy.write_row((2, 2, "y", 2))
                else:
                    for _ in copy:
                        pass
        else:
            conn.execute(text, prepare=False)
    except psycopg.Error as e:
        return str(e).splitlines()[0]
    return None


class ClassifyOnStandbyTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.primary, self.replica = shared_cluster()
        self.dbname = unique_name("cls")
        self.primary.create_database(self.dbname)
        self.primary.psql(SCHEMA, dbname=self.dbname)
        wait_replica_caught_up()
        with psycopg.connect(self.primary.dsn(dbname=self.dbname), autocommit=True) as conn:
            names = frozenset(row[0] for row in conn.execute(FUNCTIONS_SQL))
        self.classifier = Classifier(known_read_only=names)

    def _on(self, node: str, text: str, rollback: bool = False) -> Optional[str]:
        """``text``'s error on a fresh connection to ``node``; on the primary in a
        transaction rolled back afterwards, so the fixtures stay as they are."""
        pg = self.primary if node == "primary" else self.replica
        with psycopg.connect(pg.dsn(dbname=self.dbname), autocommit=not rollback) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            self.assertEqual(in_recovery, (node == "replica",))
            conn.rollback()  # a no-op in autocommit
            error = _run(conn, text)
            conn.rollback()
            return error

    def _check(self, rows: list[tuple[str, int]], refused: bool) -> None:
        """Every row's route, and whether the standby runs it; all mismatches at once."""
        bad = []
        for text, route in rows:
            got = self.classifier.classify(text).route
            if got != route:
                bad.append(f"{text!r}: route {got}, expected {route}")
            error = self._on("replica", text)
            if refused and error is None:
                bad.append(f"{text!r}: the standby ran it, expected a refusal")
            elif not refused and error is not None:
                bad.append(f"{text!r}: the standby refused it: {error}")
            if refused:
                primary_error = self._on("primary", text, rollback=True)
                if primary_error is not None:
                    bad.append(f"{text!r}: the primary refused it too: {primary_error}")
        self.assertEqual(bad, [])

    def test_reads_run_on_standby(self) -> None:
        """Reads (and what is kept off only by rule) run on the standby."""
        self._check(READS, refused=False)

    def test_session_state_runs_on_standby(self) -> None:
        """Statements sent to every node (SET, transaction control, PREPARE) run there."""
        self._check(SESSION_STATE, refused=False)

    def test_refused_by_standby_not_by_primary(self) -> None:
        """What is kept off for the standby's refusal fails there and runs on the primary."""
        self._check(REFUSED, refused=True)
