"""pgpool_tw.cluster.classify: where each statement may run, by pgpool-II's load-balancing rules."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.classify import (
    ROUTE_ALL,
    ROUTE_LOCAL,
    ROUTE_PRIMARY,
    ROUTE_STANDBY,
    Classifier,
    Verdict,
)
from pgpool_tw.cluster.pgpool_sql import PGPOOL_SET, PGPOOL_SHOW, SHOW, LocalCommand

STANDBY, PRIMARY, ALL, LOCAL = ROUTE_STANDBY, ROUTE_PRIMARY, ROUTE_ALL, ROUTE_LOCAL
#: What the catalog says is not VOLATILE, for the tests that need functions to be known.
CATALOG = frozenset({"count", "lower", "now", "pg_catalog.extract", "abs"})


class Table:
    """Rows of (text, expected fields); every mismatch is reported at once."""

    def __init__(self, case: SynchronousTestCase, classifier: Classifier) -> None:
        self.case = case
        self.classifier = classifier
        self.failures: list[str] = []

    def row(self, text: str, route: int, **fields: Any) -> Verdict:
        verdict = self.classifier.classify(text)
        expected = {"route": route, **fields}
        got = {name: getattr(verdict, name) for name in expected}
        if got != expected:
            self.failures.append(f"{text!r}: expected {expected}, got {got}")
        return verdict

    def done(self) -> None:
        self.case.assertEqual(self.failures, [])


def table(case: SynchronousTestCase, **options: Any) -> Table:
    options.setdefault("known_read_only", CATALOG)
    return Table(case, Classifier(**options))


class ReadTests(SynchronousTestCase):
    def test_plain_reads_go_to_the_standby(self) -> None:
        """SELECT, VALUES, TABLE, SHOW and COPY TO STDOUT that only read may be load balanced."""
        t = table(self)
        t.row(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
            STANDBY,
            write=False,
            relations=("pgbench_accounts",),
        )
        t.row("select a from u join t on t.id = u.id", STANDBY, relations=("t", "u"))
        t.row('SELECT * FROM Public."Mixed"', STANDBY, relations=("public.Mixed",))
        t.row("VALUES (1), (2)", STANDBY, relations=())
        t.row("TABLE t", STANDBY, relations=("t",))
        t.row("with c as (select 1) select * from c", STANDBY)
        t.row("select count(*), lower(name) from t", STANDBY)
        t.row("SHOW work_mem", STANDBY, write=False)
        t.row("COPY t TO STDOUT", STANDBY, relations=("t",))
        t.row("COPY (SELECT a FROM t) TO STDOUT", STANDBY, relations=("t",))
        t.row("select 1; select 2 from u", STANDBY, relations=("u",))
        t.done()

    def test_locking_into_and_modifying_ctes_write(self) -> None:
        """FOR UPDATE/SHARE/KEY SHARE, SELECT INTO and data-modifying CTEs go to the primary."""
        t = table(self)
        for lock in ("FOR UPDATE", "FOR SHARE", "FOR NO KEY UPDATE", "FOR KEY SHARE"):
            t.row(f"select * from t {lock}", PRIMARY, write=True)
        t.row("select * from (select * from t for update) s", PRIMARY, write=True)
        t.row("select * into t2 from t", PRIMARY, write=True, temp_created=())
        t.row("with x as (delete from t returning *) select * from x", PRIMARY, write=True)
        t.row("with x as (insert into t values (1) returning *) select * from x", PRIMARY)
        t.row("with x as (update t set a = 1 returning *) select * from x", PRIMARY)
        t.done()

    def test_explain(self) -> None:
        """EXPLAIN of a read is a read; EXPLAIN ANALYZE of a write is a write."""
        t = table(self)
        t.row("EXPLAIN SELECT * FROM t", STANDBY, relations=("t",))
        t.row("EXPLAIN ANALYZE SELECT * FROM t", STANDBY)
        t.row("EXPLAIN (ANALYZE) DELETE FROM t", PRIMARY, write=True)
        t.row("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", PRIMARY, write=True)
        t.row("EXPLAIN (ANALYZE false) DELETE FROM t", STANDBY, relations=("t",))
        t.row("EXPLAIN DELETE FROM t USING u", STANDBY, write=False, relations=("t", "u"))
        t.row("EXPLAIN SELECT * FROM t FOR UPDATE", STANDBY, relations=("t",))
        t.row("EXPLAIN INSERT INTO pg_temp.x VALUES (1)", PRIMARY, write=False)
        t.row("EXPLAIN EXECUTE p(1)", PRIMARY, write=False)
        t.row("EXPLAIN ANALYZE EXECUTE p(1)", PRIMARY, write=True, execute_name="p")
        t.row("EXPLAIN ANALYZE SELECT nextval('s')", PRIMARY, write=True)
        t.done()

    def test_copy(self) -> None:
        """COPY FROM writes; COPY to a server file or program stays on the primary."""
        t = table(self)
        t.row("COPY t FROM STDIN", PRIMARY, write=True)
        t.row("COPY t TO '/tmp/x'", PRIMARY, write=False)
        t.row("COPY t TO PROGRAM 'cat'", PRIMARY, write=False)
        t.row("COPY (DELETE FROM t RETURNING *) TO STDOUT", PRIMARY, write=True)
        t.row("COPY (SELECT * FROM t FOR UPDATE) TO STDOUT", PRIMARY, write=True)
        t.done()

    def test_system_catalogs_and_pg_temp_go_to_the_primary(self) -> None:
        """pgpool-II sends reads of system catalogs and of pg_temp to the primary."""
        t = table(self)
        t.row("select * from pg_class", PRIMARY, write=False, relations=("pg_class",))
        t.row("select * from pg_catalog.pg_stat_activity", PRIMARY, write=False)
        t.row("select * from pg_temp.x", PRIMARY, write=False, relations=("pg_temp.x",))
        t.row("select * from t, pg_temp_3.x", PRIMARY)
        t.row("COPY pg_temp.x TO STDOUT", PRIMARY)
        t.done()


class FunctionTests(SynchronousTestCase):
    def test_catalog_volatility_when_both_lists_are_empty(self) -> None:
        """With no lists, only functions the catalog calls non-VOLATILE are read-only."""
        t = table(self)
        t.row("select now()", STANDBY)
        t.row("select NOW()", STANDBY)
        t.row("select pg_catalog.now()", STANDBY)  # unqualified 'now' covers every now
        t.row("select extract(epoch from now())", STANDBY)  # the parser writes pg_catalog.
        t.row("select random()", PRIMARY, write=True)
        t.row("select * from t where a = my_func(1)", PRIMARY, write=True)
        t.row("select * from generate_series(1, 3)", PRIMARY, write=True)
        t.done()

    def test_unknown_catalog_means_primary(self) -> None:
        """Before the catalog is known, any function call is not provably read-only."""
        t = table(self, known_read_only=frozenset())
        t.row("select count(*) from t", PRIMARY, write=True)
        t.row("select a from t", STANDBY)
        t.done()

    def test_nextval_and_setval_always_write(self) -> None:
        """nextval and setval go to the primary even when a list calls them read-only."""
        for options in (
            {"known_read_only": frozenset({"nextval", "setval"})},
            {"read_only_functions": ("nextval", "setval", "pg_catalog.nextval")},
            {"write_functions": ("other",)},
        ):
            t = table(self, **options)
            t.row("select nextval('s')", PRIMARY, write=True)
            t.row("select setval('s', 1)", PRIMARY, write=True)
            t.row("select pg_catalog.nextval('s')", PRIMARY, write=True)
            t.done()

    def test_read_only_function_list(self) -> None:
        """read_only_function_list set: only matching functions are read-only, by regex."""
        t = table(self, read_only_functions=("get_.*", "public.f1", "COUNT"))
        t.row("select get_user(1)", STANDBY)
        t.row("select GET_user(1)", STANDBY)
        t.row("select count(*) from t", STANDBY)
        t.row("select public.f1()", STANDBY)
        t.row("select f1()", PRIMARY, write=True)  # the list names only public.f1
        t.row("select xget_user(1)", PRIMARY, write=True)  # anchored with ^
        t.row("select get_user(1) || now()", PRIMARY, write=True)  # not the catalog
        t.done()

    def test_write_function_list(self) -> None:
        """write_function_list set: matching functions write, every other one reads."""
        t = table(self, write_functions=("set_.*", "insert_row"), known_read_only=frozenset())
        t.row("select set_x(1)", PRIMARY, write=True)
        t.row("select insert_row()", PRIMARY, write=True)
        t.row("select insert_rows()", STANDBY)  # anchored with $
        t.row("select random(), my_func()", STANDBY)
        t.done()

    def test_read_only_list_wins_over_write_list(self) -> None:
        """When both lists are set, pgpool-II consults only read_only_function_list."""
        t = table(self, read_only_functions=("f",), write_functions=("f",))
        t.row("select f()", STANDBY)
        t.row("select g()", PRIMARY, write=True)
        t.done()

    def test_compiled_patterns_are_accepted(self) -> None:
        """Patterns may arrive compiled; invalid strings raise ValueError naming the setting."""
        t = table(self, read_only_functions=(re.compile("^abs$"),))
        t.row("select abs(1)", STANDBY)
        t.done()
        with self.assertRaises(ValueError) as raised:
            Classifier(write_functions=("f(",))
        self.assertIn("write_function_list", str(raised.exception))


class TextRuleTests(SynchronousTestCase):
    def test_primary_routing_query_pattern_list(self) -> None:
        """Matching patterns (anchored, case-insensitive, without double quotes) go primary."""
        t = table(self, primary_patterns=(r"SELECT \* FROM table_name1\;", ".*table_name3.*"))
        t.row("select * from table_name1;", PRIMARY, write=False)
        t.row('select * from "table_name1";', PRIMARY)  # pgpool-II strips double quotes
        t.row("select * from table_name1", STANDBY)  # anchored: the ';' is missing
        t.row('select a from "table_name3" where b', PRIMARY)
        t.row("select a\nfrom x join table_name3 on true", PRIMARY)
        t.row("select * from table_name2", STANDBY)
        t.row("insert into table_name3 values (1)", PRIMARY, write=True)
        t.done()

    def test_leading_comments_without_allow_sql_comments(self) -> None:
        """allow_sql_comments off: a comment opening a statement stops load balancing."""
        t = table(self)
        t.row("/* app */ SELECT 1", PRIMARY, write=False)
        t.row("-- app\nSELECT 1", PRIMARY)
        t.row("  /* app */SELECT 1", PRIMARY)
        t.row("SELECT 1; /* app */ SELECT 2", PRIMARY)
        t.row("SELECT 1 /* inside */", STANDBY)
        t.row("SELECT '/* not a comment */'", STANDBY)
        t.row("SELECT 1 -- trailing", STANDBY)
        t.done()

    def test_allow_sql_comments(self) -> None:
        """allow_sql_comments on: comments are ignored, except a leading NO LOAD BALANCE."""
        t = table(self, allow_sql_comments=True)
        t.row("/* app */ SELECT 1", STANDBY)
        t.row("-- app\nSELECT 1", STANDBY)
        t.row("/*NO LOAD BALANCE*/ SELECT 1", PRIMARY, write=False)
        t.row("/* no load balance */ SELECT 1", PRIMARY)
        t.row("SELECT 1 /*NO LOAD BALANCE*/", STANDBY)
        t.done()


class SessionStateTests(SynchronousTestCase):
    def test_transaction_control_goes_everywhere(self) -> None:
        """BEGIN, COMMIT, ROLLBACK and savepoints reach every node, named in tx."""
        t = table(self)
        t.row("BEGIN", ALL, tx="begin", write=False)
        t.row("START TRANSACTION", ALL, tx="begin")
        t.row("BEGIN ISOLATION LEVEL REPEATABLE READ", ALL, tx="begin")
        # A standby refuses these: the transaction is the primary's alone.
        t.row("BEGIN ISOLATION LEVEL SERIALIZABLE", PRIMARY, tx="begin", write=False)
        t.row("BEGIN READ WRITE", PRIMARY, tx="begin")
        t.row("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY", PRIMARY, tx="begin")
        t.row("COMMIT", ALL, tx="commit")
        t.row("END", ALL, tx="commit")
        t.row("ROLLBACK", ALL, tx="rollback")
        t.row("ABORT", ALL, tx="rollback")
        t.row("SAVEPOINT a", ALL, tx="savepoint")
        t.row("RELEASE SAVEPOINT a", ALL, tx="release")
        t.row("ROLLBACK TO SAVEPOINT a", ALL, tx="rollback_to")
        t.row("PREPARE TRANSACTION 'g'", PRIMARY, tx="prepare_transaction")
        t.row("COMMIT PREPARED 'g'", PRIMARY, write=True, tx="")
        t.row("ROLLBACK PREPARED 'g'", PRIMARY, write=True)
        t.done()

    def test_set_and_friends_go_everywhere(self) -> None:
        """SET, RESET, DISCARD, LOAD, SET TRANSACTION and weak LOCKs reach every node."""
        t = table(self)
        for text in (
            "SET work_mem = '64MB'",
            "SET LOCAL statement_timeout = 0",
            "RESET work_mem",
            "RESET ALL",
            "SET ROLE bob",
            "SET search_path TO a, b",
            "DISCARD ALL",
            "LOAD 'auto_explain'",
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET TRANSACTION READ ONLY",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET transaction_read_only = on",
            "SET transaction_isolation = 'read committed'",
            "LOCK t IN ACCESS SHARE MODE",
            "LOCK t IN ROW SHARE MODE",
        ):
            t.row(text, ALL, write=False, desync=False)
        t.row("LOCK t", PRIMARY, write=True)
        t.row("LOCK t IN ROW EXCLUSIVE MODE", PRIMARY, write=True)
        t.done()

    def test_settings_a_standby_refuses_stay_on_the_primary(self) -> None:
        """Read-write, serializable and snapshot settings: the primary, and the session desyncs."""
        t = table(self)
        for text in (
            "SET transaction_read_only = off",
            "SET transaction_read_only TO false",
            "SET transaction_read_only = 0",
            "SET TRANSACTION READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET transaction_isolation TO 'serializable'",
            "SET default_transaction_isolation = 'SERIALIZABLE'",
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
        ):
            t.row(text, PRIMARY, desync=True, write=False)
        t.done()

    def test_prepare_execute_deallocate(self) -> None:
        """SQL PREPARE reaches every node with the inner verdict; EXECUTE names its statement."""
        t = table(self)
        prepared = t.row("PREPARE p AS SELECT * FROM t WHERE a = $1", ALL, prepare_name="p")
        self.assertEqual(prepared.inner, Verdict(STANDBY, relations=("t",)))
        self.assertEqual(prepared.relations, ("t",))
        written = t.row("PREPARE q (int) AS INSERT INTO t VALUES ($1)", ALL, prepare_name="q")
        self.assertIsNotNone(written.inner)
        assert written.inner is not None
        self.assertEqual((written.inner.route, written.inner.write), (PRIMARY, True))
        self.assertEqual(written.relations, ("t",))  # the session checks its temp tables
        t.row("PREPARE r AS SELECT * FROM pg_temp.x", PRIMARY, desync=True, prepare_name="r")
        t.row("EXECUTE p(1)", PRIMARY, execute_name="p")
        t.row("DEALLOCATE p", ALL, deallocate_name="p")
        t.row("DEALLOCATE PREPARE p", ALL, deallocate_name="p")
        t.row("DEALLOCATE ALL", ALL, deallocate_name="*")
        t.done()


class PrimaryTests(SynchronousTestCase):
    def test_writes_and_ddl(self) -> None:
        """DML, DDL, maintenance and procedures go to the primary as writes."""
        t = table(self)
        for text in (
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE",
            "TRUNCATE t",
            "CREATE TABLE t (a int)",
            "ALTER TABLE t ADD b int",
            "DROP TABLE t",
            "COMMENT ON TABLE t IS 'x'",
            "CREATE INDEX ON t (a)",
            "VACUUM t",
            "ANALYZE t",
            "CHECKPOINT",
            "CALL p()",
            "DO $$ BEGIN END $$",
            "GRANT SELECT ON t TO bob",
            "REFRESH MATERIALIZED VIEW m",
        ):
            t.row(text, PRIMARY, write=True, desync=False)
        t.done()

    def test_signals_and_cursors_stay_on_the_primary(self) -> None:
        """LISTEN/UNLISTEN/NOTIFY and cursors live on one node: the primary, no write."""
        t = table(self)
        for text in (
            "LISTEN ch",
            "UNLISTEN *",
            "NOTIFY ch, 'x'",
            "DECLARE c CURSOR FOR SELECT * FROM t",
            "FETCH 10 FROM c",
            "MOVE NEXT IN c",
            "CLOSE c",
            "SET CONSTRAINTS ALL DEFERRED",
        ):
            t.row(text, PRIMARY, write=False)
        t.row("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", PRIMARY, write=True)
        t.done()

    def test_temp_tables_created(self) -> None:
        """CREATE TEMP TABLE / VIEW / SEQUENCE, SELECT INTO TEMP and pg_temp name the table."""
        t = table(self)
        t.row("CREATE TEMP TABLE x (a int)", PRIMARY, write=True, temp_created=("x",))
        t.row("CREATE TEMPORARY TABLE Y AS SELECT 1", PRIMARY, temp_created=("y",))
        t.row("CREATE TABLE pg_temp.z (a int)", PRIMARY, temp_created=("z",))
        t.row("SELECT 1 AS a INTO TEMP w", PRIMARY, write=True, temp_created=("w",))
        t.row("CREATE TEMP VIEW v AS SELECT 1", PRIMARY, temp_created=("v",))
        t.row("CREATE TEMP SEQUENCE s", PRIMARY, temp_created=("s",))
        t.row("CREATE TABLE x (a int)", PRIMARY, temp_created=())
        t.row("CREATE TEMP TABLE a (i int); CREATE TEMP TABLE b (i int)", PRIMARY)
        self.assertEqual(
            t.classifier.classify("CREATE TEMP TABLE a (i int); SELECT 1").temp_created, ("a",)
        )
        t.done()

    def test_unparsable_and_empty(self) -> None:
        """Text PostgreSQL would reject goes to the primary as a write; empty text, no write."""
        t = table(self)
        t.row("SELEC 1", PRIMARY, write=True)
        t.row("SELECT '", PRIMARY, write=True)
        t.row("/* unterminated", PRIMARY, write=True)
        t.row("SELECT '\udcff'", PRIMARY, write=True)  # undecodable bytes, surrogate-escaped
        t.row("", PRIMARY, write=False)
        t.row(";", PRIMARY, write=False)
        t.row("-- only a comment", PRIMARY, write=False)
        t.done()

    def test_pooler_commands_are_local(self) -> None:
        """SHOW pool_nodes, pgpool-II's other SHOW commands and PGPOOL SHOW/SET/RESET are
        answered by the pooler."""
        t = table(self)
        t.row("SHOW pool_nodes", LOCAL, local=LocalCommand(SHOW, "pool_nodes"))
        t.row("show POOL_NODES;", LOCAL, local=LocalCommand(SHOW, "pool_nodes"))
        for name in ("pool_status", "pool_version", "pool_processes", "pool_pools"):
            t.row(f"SHOW {name}", LOCAL, local=LocalCommand(SHOW, name))
        t.row('SHOW "POOL_NODES"', STANDBY, local=None)  # quoted: not folded, not ours
        t.row("SHOW pool_nodes; SELECT 1", PRIMARY, local=None)
        t.row("PGPOOL SHOW port", LOCAL, local=LocalCommand(PGPOOL_SHOW, "port"))
        t.row(
            "pgpool set client_idle_limit = 3",
            LOCAL,
            local=LocalCommand(PGPOOL_SET, "client_idle_limit", "3"),
        )
        t.row("PGPOOL SHOW port; SELECT 1", PRIMARY, local=None)  # unparseable: PostgreSQL's
        t.done()


class MultiStatementTests(SynchronousTestCase):
    def test_mixed_strings(self) -> None:
        """Several statements: standby or everywhere only if all agree; else primary."""
        t = table(self)
        t.row("SELECT 1; SELECT 2", STANDBY)
        t.row("SET a.b = 1; RESET c", ALL, desync=False)
        t.row("BEGIN; SET LOCAL a.b = 1", ALL, tx="begin", desync=False)
        t.row("SET a.b = 1; INSERT INTO t VALUES (1)", PRIMARY, write=True, desync=True)
        t.row("SELECT 1; SET a.b = 1", PRIMARY, write=False, desync=True)
        t.row("PREPARE p AS SELECT 1; SELECT 2", PRIMARY, desync=True, prepare_name="p")
        t.row("BEGIN; INSERT INTO t VALUES (1); COMMIT", PRIMARY, write=True, tx="commit")
        t.row("BEGIN; SELECT 1", PRIMARY, write=False, tx="begin", desync=False)
        t.row("SELECT 1; SELECT * FROM t FOR UPDATE", PRIMARY, write=True)
        t.row("SET transaction_read_only = off; SET a.b = 1", PRIMARY, desync=True)
        t.done()


class CacheTests(SynchronousTestCase):
    def test_hit_returns_the_same_object(self) -> None:
        """A repeated text returns the cached verdict object itself."""
        classifier = Classifier()
        first = classifier.classify("SELECT * FROM t WHERE a = 1")
        self.assertIs(classifier.classify("SELECT * FROM t WHERE a = 1"), first)

    def test_eviction_keeps_the_newer_half(self) -> None:
        """A full cache drops its older half and stays bounded."""
        classifier = Classifier(cache_size=10)
        for n in range(10):
            classifier.classify(f"SELECT {n} FROM t")
        classifier.classify("SELECT 10 FROM t")
        self.assertEqual(
            sorted(classifier._cache), sorted(f"SELECT {n} FROM t" for n in range(5, 11))
        )
        for n in range(1000):
            classifier.classify(f"SELECT {n} FROM u")
        self.assertLessEqual(len(classifier._cache), 10)

    def test_writes_name_their_table(self) -> None:
        """dml_adaptive reads writes_to: the table a DML statement writes, as written."""
        classifier = Classifier()
        self.assertEqual(classifier.classify("UPDATE t SET a = 1").writes_to, ("t",))
        self.assertEqual(classifier.classify("insert into s.T values (1)").writes_to, ("s.t",))
        self.assertEqual(
            classifier.classify("DELETE FROM a; UPDATE b SET x = 2").writes_to, ("a", "b")
        )
        # A write through a function has no known table.
        self.assertEqual(classifier.classify("SELECT f(); UPDATE b SET x = 2").writes_to, ())

    def test_texts_of_one_shape_share_a_verdict(self) -> None:
        """SELECTs differing only in constants (pglast's normalize) share one verdict."""
        classifier = Classifier()
        first = classifier.classify("SELECT my_func(1) FROM t WHERE a = 'x'")
        self.assertEqual((first.route, first.write), (PRIMARY, True))
        self.assertIs(classifier.classify("SELECT my_func(2) FROM t WHERE a = 'y'"), first)
        # Writes too (pgbench's TPC-B sends a new text for every statement).
        update = classifier.classify("UPDATE t SET a = a + 5 WHERE b = 7")
        self.assertEqual((update.route, update.write), (PRIMARY, True))
        self.assertIs(classifier.classify("UPDATE t SET a = a + -3 WHERE b = 9"), update)
        self.assertEqual(len(classifier._shapes), 2)

    def test_constants_still_decide_outside_select(self) -> None:
        """A shared shape never carries a verdict that depends on a constant."""
        t = table(self)
        t.row("SET transaction_read_only = on", ALL, desync=False)
        t.row("SET transaction_read_only = off", PRIMARY, desync=True)
        t.row("SET transaction_isolation = 'read committed'", ALL)
        t.row("SET transaction_isolation = 'serializable'", PRIMARY, desync=True)
        t.row("EXPLAIN (ANALYZE 0) DELETE FROM t", STANDBY)
        t.row("EXPLAIN (ANALYZE 1) DELETE FROM t", PRIMARY, write=True)
        t.done()

    def test_text_rules_read_each_text(self) -> None:
        """Comments and primary_routing_query_pattern_list apply per text, not per shape."""
        t = table(self, primary_patterns=(".*a = 5.*",))
        t.row("SELECT * FROM t WHERE a = 4", STANDBY)
        t.row("SELECT * FROM t WHERE a = 5", PRIMARY)
        t.row("SELECT * FROM t WHERE a = 6", STANDBY)
        t.row("/* x */ SELECT * FROM t WHERE a = 7", PRIMARY)
        t.done()

    def test_set_known_read_only_clears_the_cache(self) -> None:
        """New catalog knowledge changes verdicts already cached."""
        classifier = Classifier()
        self.assertEqual(classifier.classify("select f()").route, PRIMARY)
        classifier.set_known_read_only(frozenset({"F"}))
        self.assertEqual(classifier.classify("select f()").route, STANDBY)
        classifier.set_known_read_only(frozenset())
        self.assertEqual(classifier.classify("select f()").route, PRIMARY)

    def test_long_texts_are_not_cached(self) -> None:
        """Texts beyond CACHE_TEXT_LIMIT are classified without filling the cache."""
        classifier = Classifier()
        text = "SELECT 1 FROM t WHERE a IN (" + ", ".join(map(str, range(3000))) + ")"
        self.assertEqual(classifier.classify(text).route, STANDBY)
        self.assertEqual(len(classifier._cache), 0)
        self.assertEqual(len(classifier._shapes), 0)


class HostileTextTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_never_raises(self, text: str) -> None:
        """Any text gets a verdict."""
        self.assertIsInstance(Classifier().classify(text), Verdict)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    "SELECT",
                    "1",
                    "FROM",
                    "t",
                    ";",
                    "/*",
                    "*/",
                    "--",
                    "\n",
                    "'",
                    '"',
                    "$$",
                    "(",
                    ")",
                    "INSERT",
                    "SET",
                    "WITH",
                    "FOR UPDATE",
                    "nextval(",
                    "\x00",
                ]
            )
        ).map(" ".join)
    )
    def test_never_raises_on_sql_like_text(self, text: str) -> None:
        """SQL-shaped garbage gets a verdict, and a read only when it parsed as one."""
        verdict = Classifier(primary_patterns=(".*x.*",)).classify(text)
        self.assertIsInstance(verdict, Verdict)
        if verdict.route == STANDBY:
            self.assertFalse(verdict.write)
