"""The issue #18 settings: pool modes, their lists, pool sizes, waits and prepared statements."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config import pooling, report, values
from pgpool_tw.config.pooling import SESSION, TRANSACTION, PoolModeRule, parse_pool_mode_list
from pgpool_tw.config.routing import parse_redirect_list
from pgpool_tw.config.settings import (
    RESTART_REQUIRED,
    Config,
    ConfigError,
    field_of,
    load_config,
    parse_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "etc", "pgpool.conf.sample")

INTEGERS = {
    "max_client_conn": 1,
    "default_pool_size": 1,
    "min_pool_size": 0,
    "reserve_pool_size": 0,
    "max_prepared_statements": 0,
}
TIMES = ("reserve_pool_timeout", "query_wait_timeout", "server_idle_timeout")
NEW_FIELDS = (
    "pool_mode",
    "user_pool_mode_list",
    "database_pool_mode_list",
    *INTEGERS,
    *TIMES,
)
MODES = "; expected session or transaction"
STATEMENT = ": statement pooling is not supported by pgpool-tw" + MODES


def error(text: str) -> str:
    """The one-line ConfigError ``text`` gives, as parsed from 'p.conf'."""
    try:
        parse_config(text, "p.conf")
    except ConfigError as e:
        return str(e)
    raise AssertionError(f"{text!r} parsed")


class DefaultTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """An empty file gives the plan's defaults, times in seconds as floats."""
        c = parse_config("")
        self.assertEqual(c.pool_mode, "session")
        self.assertEqual((c.user_pool_mode_list, c.database_pool_mode_list), ((), ()))
        self.assertEqual(c.max_client_conn, 100)
        self.assertEqual(c.default_pool_size, 20)
        self.assertEqual(c.min_pool_size, 0)
        self.assertEqual(c.reserve_pool_size, 0)
        self.assertEqual(c.max_prepared_statements, 200)
        times = (c.reserve_pool_timeout, c.query_wait_timeout, c.server_idle_timeout)
        self.assertEqual(times, (5.0, 120.0, 600.0))
        for value in times:
            self.assertIsInstance(value, float)
        self.assertEqual(c.warnings, ())

    def test_default_mode_for_everyone(self) -> None:
        """With no lists every login gets pool_mode, the constants' values."""
        self.assertEqual((SESSION, TRANSACTION), ("session", "transaction"))
        self.assertEqual(Config().pool_mode_for("alice", "app"), SESSION)
        c = parse_config("pool_mode = transaction")
        self.assertEqual(c.pool_mode_for("alice", "app"), TRANSACTION)
        self.assertEqual(c.pool_mode_for("", ""), TRANSACTION)

    def test_all_reloadable(self) -> None:
        """No new setting needs a restart, and each maps to its own field."""
        for name in NEW_FIELDS:
            self.assertNotIn(name, RESTART_REQUIRED)
            self.assertEqual(field_of(name), name)


class ReadTests(SynchronousTestCase):
    def test_pool_mode_words(self) -> None:
        """pool_mode takes session or transaction, ignoring case and spaces as PgBouncer does."""
        for text, mode in (
            ("session", SESSION),
            ("transaction", TRANSACTION),
            ("'Transaction'", TRANSACTION),
            ("' SESSION '", SESSION),
        ):
            self.assertEqual(parse_config(f"pool_mode = {text}").pool_mode, mode)

    def test_integers(self) -> None:
        """Each count is read, down to its least allowed value."""
        for name, low in INTEGERS.items():
            self.assertEqual(getattr(parse_config(f"{name} = 7"), name), 7, name)
            self.assertEqual(getattr(parse_config(f"{name} = {low}"), name), low, name)
            self.assertEqual(getattr(parse_config(f"{name} = '+50000'"), name), 50000, name)

    def test_times(self) -> None:
        """Each time reads as the other time settings: seconds, or with a unit; 0 allowed."""
        for name in TIMES:
            for text, seconds in (("30", 30.0), ("2min", 120.0), ("'1.5 s'", 1.5), ("0", 0.0)):
                value = getattr(parse_config(f"{name} = {text}"), name)
                self.assertEqual(value, seconds, (name, text))
                self.assertIsInstance(value, float)
            self.assertEqual(getattr(parse_config(f"{name} = 250ms"), name), 0.25)

    def test_lists(self) -> None:
        """Both lists read into (anchored pattern, mode) rules in file order."""
        c = parse_config(
            "user_pool_mode_list = 'batch_.*:session, app : Transaction'\n"
            "database_pool_mode_list = 'reports:session'\n"
        )
        self.assertEqual(
            [(r.pattern.pattern, r.mode) for r in c.user_pool_mode_list],
            [("^batch_.*$", SESSION), ("^app$", TRANSACTION)],
        )
        self.assertEqual(
            [(r.pattern.pattern, r.mode) for r in c.database_pool_mode_list],
            [("^reports$", SESSION)],
        )
        self.assertEqual(c.warnings, ())

    def test_empty_list_entries(self) -> None:
        """'' is no rule at all; blank entries and a trailing comma are skipped."""
        self.assertEqual(parse_pool_mode_list(""), ())
        self.assertEqual(len(parse_pool_mode_list(" a:session, ,b:session,")), 2)

    def test_backslash_kept_for_the_pattern(self) -> None:
        """A backslash inside quotes is the pattern's, as in pgpool-II's regex settings."""
        c = parse_config("user_pool_mode_list = 'batch_\\d+:session'\npool_mode = transaction")
        self.assertEqual(c.user_pool_mode_list[0].pattern.pattern, "^batch_\\d+$")
        self.assertEqual(c.pool_mode_for("batch_12", "db"), SESSION)
        self.assertEqual(c.pool_mode_for("batch_d", "db"), TRANSACTION)

    def test_patterns_read_as_the_redirect_lists_do(self) -> None:
        """One pattern reader: a name compiles to the very pattern a redirect list makes."""
        for name in ("app", "^a.*", "b$", "[0-9]+", "a|b", "x\\d"):
            self.assertEqual(
                parse_pool_mode_list(f"{name}:session")[0].pattern,
                parse_redirect_list(f"{name}:primary")[0].pattern,
            )

    def test_rules_frozen_and_comparable(self) -> None:
        """Rules compare by value, so equal files give equal Configs; they cannot change."""
        text = "user_pool_mode_list = 'a:transaction'"
        self.assertEqual(parse_config(text), parse_config(text))
        self.assertNotEqual(parse_config(text), Config())
        rule = parse_pool_mode_list("a:session")[0]
        self.assertIsInstance(rule, PoolModeRule)
        self.assertRaises(AttributeError, setattr, rule, "mode", TRANSACTION)


class RefusedTests(SynchronousTestCase):
    def test_statement_mode(self) -> None:
        """PgBouncer's statement mode is refused by name, on one line naming file and line."""
        self.assertEqual(
            error("port = 1\npool_mode = statement\n"),
            "p.conf:2: pool_mode: statement pooling is not supported by pgpool-tw" + MODES,
        )
        self.assertEqual(
            error("pool_mode = 'STATEMENT'"),
            "p.conf:1: pool_mode: statement pooling is not supported by pgpool-tw" + MODES,
        )

    def test_other_modes(self) -> None:
        """Any other word, or none, is refused with what is allowed."""
        for text in ("'sessions'", "''", "'on'", "1"):
            value = text.strip("'")
            self.assertEqual(
                error(f"pool_mode = {text}"),
                f"p.conf:1: pool_mode: invalid value {value!r}" + MODES,
            )

    def test_bad_list_entries(self) -> None:
        """Each bad entry is one line naming the file, line, setting and what is wrong."""
        entry = "; expected 'name:session' or 'name:transaction'"
        for name in ("user_pool_mode_list", "database_pool_mode_list"):
            for value, words in (
                ("app", "invalid entry 'app'" + entry),
                (":session", "invalid entry ':session'" + entry),
                ("a:", "invalid mode '' in 'a:'" + MODES),
                ("a:pooled", "invalid mode 'pooled' in 'a:pooled'" + MODES),
                ("a:session(1)", "invalid mode 'session(1)' in 'a:session(1)'" + MODES),
                ("a:statement", "invalid mode 'statement' in 'a:statement'" + STATEMENT),
                ("ok:session,b:Statement", "invalid mode 'Statement' in 'b:Statement'" + STATEMENT),
                (
                    "a(:session",
                    "invalid regular expression 'a(' "
                    "(missing ), unterminated subpattern at position 1)",
                ),
            ):
                self.assertEqual(
                    error(f"port = 1\n\n{name} = '{value}'\n"), f"p.conf:3: {name}: {words}"
                )

    def test_bad_counts(self) -> None:
        """Negative, fractional or non-numeric counts are refused; the two sizes need >= 1."""
        for name, low in INTEGERS.items():
            for text in (str(low - 1), "-5", "1.5", "ten", "''", "1_000"):
                value = text.strip("'")
                self.assertEqual(
                    error(f"{name} = {text}"),
                    f"p.conf:1: {name}: invalid value {value!r}; expected an integer >= {low}",
                )

    def test_bad_times(self) -> None:
        """Negative, unit-less words or unknown units are refused for each time."""
        for name in TIMES:
            for text in ("-1", "'-1s'", "'5 minutes'", "'5MIN'", "soon", "nan"):
                value = text.strip("'")
                self.assertEqual(
                    error(f"{name} = {text}"),
                    f"p.conf:1: {name}: invalid value {value!r}; {values.TIME.allowed}",
                )

    def test_misspelt_names_suggest_the_setting(self) -> None:
        """A typo'd new name is a warning with the nearest known name, not silence."""
        c = parse_config("pool_mod = transaction\nmax_client_con = 5\n", "p.conf")
        self.assertEqual(
            c.warnings,
            (
                "p.conf:1: unknown setting 'pool_mod' ignored; did you mean 'pool_mode'?",
                "p.conf:2: unknown setting 'max_client_con' ignored; "
                "did you mean 'max_client_conn'?",
            ),
        )
        self.assertEqual(c.pool_mode, SESSION)

    @given(st.text(max_size=40))
    def test_any_list_text_parses_or_fails_cleanly(self, text: str) -> None:
        """Any list text gives rules or a BadValue with a one-line message, nothing else."""
        try:
            rules = parse_pool_mode_list(text)
        except values.BadValue as e:
            self.assertNotIn("\n", str(e).replace(repr(text), ""))
            return
        for rule in rules:
            self.assertIn(rule.mode, (SESSION, TRANSACTION))


class PoolSizeWarningTests(SynchronousTestCase):
    def test_min_above_default_warns_once(self) -> None:
        """min_pool_size above default_pool_size loads, with one warning on the later line."""
        c = parse_config("min_pool_size = 30\nport = 1\n", "p.conf")
        self.assertEqual(c.min_pool_size, 30)
        self.assertEqual(
            c.warnings,
            (
                "p.conf:1: min_pool_size (30) is more than default_pool_size (20); "
                "at most 20 servers are kept per pool",
            ),
        )
        c = parse_config("min_pool_size = 5\nport = 1\ndefault_pool_size = 4\n", "p.conf")
        self.assertEqual(
            c.warnings,
            (
                "p.conf:3: min_pool_size (5) is more than default_pool_size (4); "
                "at most 4 servers are kept per pool",
            ),
        )

    def test_min_up_to_default_is_quiet(self) -> None:
        """min_pool_size equal to default_pool_size, or below it, gives no warning."""
        self.assertEqual(parse_config("min_pool_size = 20").warnings, ())
        self.assertEqual(parse_config("min_pool_size = 3\ndefault_pool_size = 3").warnings, ())
        self.assertEqual(parse_config("default_pool_size = 1").warnings, ())


class PrecedenceTests(SynchronousTestCase):
    CONFIG = parse_config(
        "pool_mode = session\n"
        "user_pool_mode_list = 'batch:session,app_.*:transaction,app_admin:session'\n"
        "database_pool_mode_list = 'web:transaction,w.*:session,batchdb:transaction'\n"
    )

    def test_user_beats_database_beats_pool_mode(self) -> None:
        """A user entry wins over a database entry, which wins over pool_mode."""
        c = self.CONFIG
        self.assertEqual(c.pool_mode_for("batch", "web"), SESSION)  # user over database
        self.assertEqual(c.pool_mode_for("app_1", "reports"), TRANSACTION)  # user only
        self.assertEqual(c.pool_mode_for("alice", "web"), TRANSACTION)  # database only
        self.assertEqual(c.pool_mode_for("alice", "reports"), SESSION)  # neither

    def test_first_match_wins(self) -> None:
        """In each list the first matching entry counts, not the most specific one."""
        c = self.CONFIG
        self.assertEqual(c.pool_mode_for("app_admin", "reports"), TRANSACTION)
        self.assertEqual(c.pool_mode_for("alice", "web"), TRANSACTION)
        self.assertEqual(c.pool_mode_for("alice", "www"), SESSION)

    def test_anchoring(self) -> None:
        """Patterns match whole names (pgpool-II's anchoring), ignoring case."""
        c = self.CONFIG
        self.assertEqual(c.pool_mode_for("batch2", "x"), SESSION)  # pool_mode, not 'batch'
        self.assertEqual(c.pool_mode_for("mybatch", "x"), SESSION)
        self.assertEqual(c.pool_mode_for("my_app_1", "x"), SESSION)  # not app_.*
        self.assertEqual(c.pool_mode_for("APP_X", "x"), TRANSACTION)
        self.assertEqual(c.pool_mode_for("alice", "web2"), SESSION)  # w.* : session
        self.assertEqual(c.pool_mode_for("alice", "aweb"), SESSION)  # neither list
        self.assertEqual(c.pool_mode_for("alice", "BATCHDB"), TRANSACTION)
        c = parse_config("pool_mode = transaction\nuser_pool_mode_list = '^a:session'\n")
        self.assertEqual(c.pool_mode_for("a", "d"), SESSION)
        self.assertEqual(c.pool_mode_for("ab", "d"), TRANSACTION)  # '^a' becomes '^a$'

    def test_lists_without_pool_mode(self) -> None:
        """A list can send some logins to transaction mode while the rest stay in session."""
        c = parse_config("database_pool_mode_list = 'app:transaction'")
        self.assertEqual(c.pool_mode_for("u", "app"), TRANSACTION)
        self.assertEqual(c.pool_mode_for("u", "other"), SESSION)

    @given(st.text(max_size=12), st.text(max_size=12))
    def test_cached_answer_is_the_rules_answer(self, user: str, database: str) -> None:
        """The cached Config.pool_mode_for answers as the uncached rules do, for any names."""
        c = self.CONFIG
        expected = pooling.pool_mode_for(
            c.pool_mode, c.user_pool_mode_list, c.database_pool_mode_list, user, database
        )
        self.assertEqual(c.pool_mode_for(user, database), expected)
        self.assertEqual(c.pool_mode_for(user, database), expected)


class CacheTests(SynchronousTestCase):
    def test_lookup_caches_by_names(self) -> None:
        """A lookup answers a repeated login from its cache, and its cache is bounded."""
        rules = parse_pool_mode_list("a.*:transaction")
        lookup = pooling.mode_lookup(SESSION, rules, ())
        self.assertEqual(lookup("ab", "d"), TRANSACTION)
        self.assertEqual(lookup("ab", "d"), TRANSACTION)
        self.assertEqual(lookup("b", "d"), SESSION)
        info = lookup.cache_info()  # type: ignore[attr-defined]
        self.assertEqual((info.hits, info.misses), (1, 2))
        self.assertIsNotNone(info.maxsize)

    def test_one_lookup_per_config(self) -> None:
        """A Config keeps its lookup; an equal Config built again has its own."""
        text = "user_pool_mode_list = 'a:transaction'"
        first, second = parse_config(text), parse_config(text)
        first.pool_mode_for("a", "d")
        self.assertIs(first._pool_mode_lookup, first._pool_mode_lookup)
        self.assertIsNot(first._pool_mode_lookup, second._pool_mode_lookup)
        self.assertEqual(first, second)  # the lookup is not part of the comparison


class ReloadTests(SynchronousTestCase):
    def test_reload_gives_new_answers(self) -> None:
        """After a reload the new Config answers by the new lists; the old keeps its own."""
        old = parse_config("user_pool_mode_list = 'app:transaction'")
        self.assertEqual(old.pool_mode_for("app", "d"), TRANSACTION)  # cached in old
        new = parse_config("user_pool_mode_list = 'app:session'\npool_mode = transaction")
        plan = report.plan_reload(old, new)
        self.assertEqual(plan.changed, ["pool_mode", "user_pool_mode_list"])
        self.assertEqual(plan.restart, [])
        self.assertEqual(plan.config.pool_mode_for("app", "d"), SESSION)
        self.assertEqual(plan.config.pool_mode_for("web", "d"), TRANSACTION)
        self.assertEqual(old.pool_mode_for("app", "d"), TRANSACTION)
        self.assertEqual(old.pool_mode_for("web", "d"), SESSION)

    def test_reload_with_a_restart_setting_still_applies_the_modes(self) -> None:
        """A reload that also changes port keeps the port and applies the new modes."""
        old = parse_config("port = 1\n")
        old.pool_mode_for("u", "d")
        new = parse_config("port = 2\ndatabase_pool_mode_list = 'd:transaction'\n")
        plan = report.plan_reload(old, new)
        self.assertEqual(plan.restart, ["port"])
        self.assertEqual(plan.config.port, 1)
        self.assertEqual(plan.config.pool_mode_for("u", "d"), TRANSACTION)

    def test_every_size_and_time_reloads(self) -> None:
        """Changing each size and time is applied by a reload, none kept for a restart."""
        old = Config()
        text = "".join(f"{name} = 9\n" for name in (*INTEGERS, *TIMES))
        plan = report.plan_reload(old, parse_config(text))
        self.assertEqual(plan.changed, sorted((*INTEGERS, *TIMES)))
        self.assertEqual(plan.restart, [])
        for name in (*INTEGERS, *TIMES):
            self.assertEqual(getattr(plan.config, name), 9, name)


class SampleTests(SynchronousTestCase):
    def test_sample_sets_the_defaults(self) -> None:
        """The sample's TRANSACTION POOLING section loads to the defaults, with no warning."""
        c = load_config(SAMPLE)
        self.assertEqual(c.warnings, ())
        for name in NEW_FIELDS:
            self.assertEqual(getattr(c, name), getattr(Config(), name), name)
            self.assertIn(name, dict(c.given), name)
        with open(SAMPLE, encoding="utf-8") as handle:
            text = handle.read()
        section = text[text.index("# TRANSACTION POOLING") : text.index("# LOGGING")]
        for name in NEW_FIELDS:
            self.assertIn(f"\n{name} = ", section, name)

    def test_sample_example_list_reads(self) -> None:
        """The list example the sample gives is a valid value meaning what it says."""
        c = parse_config("user_pool_mode_list = 'batch_.*:session,app[0-9]+:transaction'")
        self.assertEqual(c.pool_mode_for("batch_x", "d"), SESSION)
        self.assertEqual(c.pool_mode_for("app7", "d"), TRANSACTION)
        self.assertEqual(c.pool_mode_for("app", "d"), SESSION)
