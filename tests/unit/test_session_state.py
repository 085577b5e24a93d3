"""cluster/session_state.py: what a statement leaves in its server session (the rule of
transaction pooling's pinning), by pglast."""

from __future__ import annotations

from collections import OrderedDict

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pgpool_tw.cluster import session_state
from pgpool_tw.cluster.session_state import (
    ADVISORY_LOCK,
    ALL,
    DEALLOCATE,
    EXECUTE,
    HOLD_CURSOR,
    LISTEN,
    LOAD,
    PREPARE,
    PREPARED,
    ROLE,
    SET,
    TEMP_TABLE,
    UNPARSED,
    StateEffect,
    state_effect,
)

#: text -> (pins, clears, settings replayed)
CASES: dict[str, tuple[set[str], set[str], list[str]]] = {
    "SET work_mem = '64MB'": ({SET}, set(), []),
    "set statement_timeout to 5000": ({SET}, set(), []),
    "SET LOCAL work_mem = 1": (set(), set(), []),
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE": (set(), set(), []),
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY": ({SET}, set(), []),
    "SET CONSTRAINTS ALL DEFERRED": (set(), set(), []),
    "SET application_name TO 'x'": (set(), set(), ["application_name"]),
    "RESET application_name": (set(), set(), ["application_name"]),
    "SET TIME ZONE 'UTC'": (set(), set(), ["timezone"]),
    "SET search_path TO public, x": (set(), set(), ["search_path"]),
    "RESET ALL": (set(), {SET}, []),
    "SET ROLE alice": ({ROLE}, set(), []),
    "RESET ROLE": (set(), {ROLE}, []),
    "SET SESSION AUTHORIZATION bob": ({ROLE}, set(), []),
    "RESET SESSION AUTHORIZATION": (set(), {ROLE}, []),
    "LISTEN ch": ({LISTEN}, set(), []),
    "UNLISTEN ch": (set(), set(), []),
    "UNLISTEN *": (set(), {LISTEN}, []),
    "SELECT pg_advisory_lock(1)": ({ADVISORY_LOCK}, set(), []),
    "SELECT pg_catalog.pg_try_advisory_lock_shared(1, 2)": ({ADVISORY_LOCK}, set(), []),
    "SELECT x FROM t WHERE pg_try_advisory_lock(id)": ({ADVISORY_LOCK}, set(), []),
    "SELECT pg_advisory_xact_lock(1)": (set(), set(), []),
    "SELECT pg_advisory_unlock(1)": (set(), set(), []),
    "SELECT pg_advisory_unlock_all()": (set(), {ADVISORY_LOCK}, []),
    "SELECT myschema.pg_advisory_lock(1)": (set(), set(), []),
    "CREATE TEMP TABLE t (a int)": ({TEMP_TABLE}, set(), []),
    "CREATE TEMPORARY VIEW v AS SELECT 1": ({TEMP_TABLE}, set(), []),
    "CREATE TEMP SEQUENCE s": ({TEMP_TABLE}, set(), []),
    "CREATE TEMP TABLE t2 AS SELECT 1": ({TEMP_TABLE}, set(), []),
    "CREATE TABLE p (a int)": (set(), set(), []),
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1": ({HOLD_CURSOR}, set(), []),
    "DECLARE c CURSOR FOR SELECT 1": (set(), set(), []),
    "CLOSE ALL": (set(), {HOLD_CURSOR}, []),
    "CLOSE c": (set(), set(), []),
    "DISCARD ALL": (set(), {ALL}, []),
    "DISCARD TEMP": (set(), {TEMP_TABLE}, []),
    "LOAD 'auto_explain'": ({LOAD}, set(), []),
    "SELECT set_config('work_mem', '1MB', false)": ({SET}, set(), []),
    "SELECT set_config('application_name', 'a', false)": ({SET}, set(), []),
    "SELECT set_config('work_mem', '1MB', true)": (set(), set(), []),
    "SELECT set_config('work_mem', '1MB', $1)": ({SET}, set(), []),
    "SELECT 1": (set(), set(), []),
    "INSERT INTO t VALUES (1)": (set(), set(), []),
    "SELEC 1": ({UNPARSED}, set(), []),
    "PREPARE p AS SELECT 1": (set(), set(), []),
    "PREPARE p AS SELECT pg_advisory_lock(1)": (set(), set(), []),
    "DEALLOCATE ALL": (set(), {PREPARED}, []),
    "DEALLOCATE p": (set(), set(), []),
}


class StateEffectTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")

    def test_each_statement(self) -> None:
        for text, (pins, clears, replayed) in CASES.items():
            effect = state_effect(text)
            got = (set(effect.pins), set(effect.clears), [name for name, _ in effect.replay])
            self.assertEqual(got, (pins, clears, replayed), text)

    def test_replay_is_the_statement_itself(self) -> None:
        """Each replayed setting carries its own statement's text, not the whole query's."""
        effect = state_effect("SELECT 1; SET search_path TO public, x ; SET TIME ZONE 'UTC'")
        self.assertEqual(
            effect.replay,
            (("search_path", "SET search_path TO public, x"), ("timezone", "SET TIME ZONE 'UTC'")),
        )

    def test_reset_replays_as_back_to_the_login_value(self) -> None:
        self.assertEqual(state_effect("RESET TimeZone").replay, (("timezone", ""),))

    def test_deallocate_names(self) -> None:
        self.assertEqual(state_effect("DEALLOCATE _pg3_0").deallocate, ("_pg3_0",))
        self.assertEqual(state_effect("DEALLOCATE PREPARE s").deallocate, ("s",))
        self.assertEqual(state_effect("DEALLOCATE ALL").deallocate, ("",))
        self.assertEqual(state_effect("SELECT 1").deallocate, ())

    def test_shapes_share_an_effect_only_where_no_constant_matters(self) -> None:
        self.assertEqual(state_effect("SELECT pg_advisory_lock(1)").pins, {ADVISORY_LOCK})
        self.assertEqual(state_effect("SELECT pg_advisory_lock(2)").pins, {ADVISORY_LOCK})
        self.assertEqual(state_effect("SELECT set_config('a.b', 'x', true)").pins, set())
        self.assertEqual(state_effect("SELECT set_config('a.b', 'x', 'false')").pins, {SET})
        self.assertEqual(state_effect("SELECT set_config('a.b', 'x', 'true')").pins, set())
        self.assertEqual(
            state_effect("SET TimeZone TO 'UTC'").replay, (("timezone", "SET TimeZone TO 'UTC'"),)
        )
        self.assertEqual(
            state_effect("SET TimeZone TO 'Japan'").replay,
            (("timezone", "SET TimeZone TO 'Japan'"),),
        )
        before = len(session_state._cache)
        for number in range(50):
            self.assertEqual(state_effect(f"SELECT * FROM t WHERE a = {number}").pins, set())
        self.assertLessEqual(len(session_state._cache), before + 1, "one shape, not 50 texts")

    def test_several_statements_add_up(self) -> None:
        effect = state_effect("LISTEN a; CREATE TEMP TABLE t (a int); UNLISTEN *")
        self.assertEqual((effect.pins, effect.clears), ({LISTEN, TEMP_TABLE}, {LISTEN}))

    def test_cached_by_text_and_bounded(self) -> None:
        self.assertIs(state_effect("SET work_mem = 1"), state_effect("SET work_mem = 1"))
        # A cache of its own (other tests' texts stay in the shared one), of texts that
        # share no effect by shape (each carries its own statement).
        self.patch(session_state, "_cache", OrderedDict())
        self.patch(session_state, "CACHE_SIZE", 3)
        for number in range(10):
            state_effect(f"PREPARE p{number} AS SELECT {number}")
        self.assertEqual(len(session_state._cache), 3)
        self.assertEqual(state_effect("SELECT 1"), StateEffect())


class SqlPreparedTests(SynchronousTestCase):
    """SQL PREPARE / EXECUTE / DEALLOCATE: reported, not pinned (the session carries them)."""

    def setUp(self) -> None:
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")
        # Caches of their own: the cache-size test counts the shared one's entries.
        self.patch(session_state, "_cache", OrderedDict())
        self.patch(session_state, "_shapes", {})

    def test_each_statement(self) -> None:
        cases = {
            "PREPARE q (int) AS SELECT $1": ((PREPARE, "q", "PREPARE q (int) AS SELECT $1"),),
            "/* x */ PREPARE Q AS select 1;  -- y": ((PREPARE, "q", "PREPARE Q AS select 1"),),
            "EXECUTE q(1)": ((EXECUTE, "q", ""),),
            'EXECUTE "Q"': ((EXECUTE, "Q", ""),),
            "EXPLAIN ANALYZE EXECUTE q(2)": ((EXECUTE, "q", ""),),
            "CREATE TABLE t AS EXECUTE q": ((EXECUTE, "q", ""),),
            "DEALLOCATE q": ((DEALLOCATE, "q", ""),),
            "DEALLOCATE PREPARE q": ((DEALLOCATE, "q", ""),),
            "DEALLOCATE ALL": ((DEALLOCATE, "", ""),),
            "DISCARD ALL": ((DEALLOCATE, "", ""),),
            "DISCARD TEMP": (),
            "SELECT 1": (),
        }
        for text, sql in cases.items():
            effect = state_effect(text)
            self.assertEqual(effect.sql, sql, text)
            self.assertNotIn(PREPARED, effect.pins, text)
            self.assertFalse(effect.several, text)

    def test_a_prepared_statement_pins_when_it_runs(self) -> None:
        alone = state_effect("PREPARE q AS SELECT pg_advisory_lock(1)")
        self.assertEqual((alone.pins, alone.runs), (set(), {ADVISORY_LOCK}))
        with_it = state_effect("PREPARE q AS SELECT pg_advisory_lock(1); EXECUTE q")
        self.assertEqual(with_it.pins, {ADVISORY_LOCK}, "the text may run it at once")
        self.assertTrue(with_it.several)
        self.assertEqual([verb for verb, _, _ in with_it.sql], [PREPARE, EXECUTE])

    def test_a_prepare_carries_its_own_text_whatever_the_shape(self) -> None:
        for number in (1, 2):
            text = f"PREPARE q AS SELECT * FROM t WHERE a = {number}"
            self.assertEqual(state_effect(text).sql, ((PREPARE, "q", text),))
