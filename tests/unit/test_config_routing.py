"""The issue #16 settings: clustering mode, load balancing, routing lists, replication check."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config import routing, values
from pgpool_tw.config.routing import Redirect, anchored, parse_redirect_list, raw_value
from pgpool_tw.config.settings import Config, ConfigError, parse_config

NODES = "; expected primary, standby or a node number from 0 to 127"


def error(text: str) -> str:
    """The one-line ConfigError ``text`` gives, as parsed from 'p.conf'."""
    try:
        parse_config(text, "p.conf")
    except ConfigError as e:
        return str(e)
    raise AssertionError(f"{text!r} parsed")


def patterns(found: tuple[re.Pattern[str], ...]) -> list[str]:
    return [p.pattern for p in found]


class DefaultTests(SynchronousTestCase):
    def test_pgpool_ii_defaults(self) -> None:
        """An empty file gives pgpool-II's defaults for every routing setting."""
        c = parse_config("")
        self.assertEqual(c.clustering_mode, "streaming_replication")
        self.assertTrue(c.load_balance_mode)
        self.assertFalse(c.statement_level_load_balance)
        self.assertEqual(c.disable_load_balance_on_write, "transaction")
        self.assertEqual(c.write_function_list, ())
        self.assertEqual(c.read_only_function_list, ())
        self.assertEqual(c.primary_routing_query_pattern_list, ())
        self.assertEqual(c.user_redirect_preference_list, ())
        self.assertEqual(c.database_redirect_preference_list, ())
        self.assertEqual(c.app_name_redirect_preference_list, ())
        self.assertFalse(c.allow_sql_comments)
        self.assertEqual(c.sr_check_period, 10)
        self.assertEqual((c.sr_check_user, c.sr_check_password), ("", ""))
        self.assertEqual(c.sr_check_database, "postgres")
        self.assertNotIn("sr_check_password", repr(c))
        self.assertEqual((c.delay_threshold, c.delay_threshold_by_time), (0, 0))
        self.assertFalse(c.prefer_lower_delay_standby)
        self.assertEqual(c.log_standby_delay, "if_over_threshold")
        self.assertFalse(c.log_per_node_statement)
        self.assertTrue(c.read_your_writes)
        self.assertEqual(c.warnings, ())

    def test_simple_settings_read(self) -> None:
        """Booleans, words and names are read into their fields."""
        c = parse_config(
            "load_balance_mode = off\nstatement_level_load_balance = on\n"
            "disable_load_balance_on_write = 'Always'\nallow_sql_comments = yes\n"
            "sr_check_user = 'checker'\nsr_check_password = 'secret'\n"
            "sr_check_database = 'db'\nprefer_lower_delay_standby = true\n"
            "log_standby_delay = none\nlog_per_node_statement = 1\nread_your_writes = off\n"
        )
        self.assertFalse(c.load_balance_mode)
        self.assertTrue(c.statement_level_load_balance)
        self.assertEqual(c.disable_load_balance_on_write, "always")
        self.assertTrue(c.allow_sql_comments)
        self.assertEqual(
            (c.sr_check_user, c.sr_check_password, c.sr_check_database),
            ("checker", "secret", "db"),
        )
        self.assertTrue(c.prefer_lower_delay_standby)
        self.assertEqual(c.log_standby_delay, "none")
        self.assertTrue(c.log_per_node_statement)
        self.assertFalse(c.read_your_writes)

    def test_on_write_choices(self) -> None:
        """disable_load_balance_on_write takes pgpool-II's five words, ignoring case."""
        for word in ("off", "transaction", "trans_transaction", "always", "dml_adaptive"):
            c = parse_config(f"disable_load_balance_on_write = {word.upper()}\n")
            self.assertEqual(c.disable_load_balance_on_write, word)
            self.assertEqual(c.warnings, ())

    def test_dml_adaptive_global_runs_as_dml_adaptive(self) -> None:
        """pgpool-II's dml_adaptive_global is read as dml_adaptive with one warning."""
        c = parse_config("\ndisable_load_balance_on_write = dml_adaptive_global\n", "p.conf")
        self.assertEqual(c.disable_load_balance_on_write, "dml_adaptive")
        self.assertEqual(len(c.warnings), 1)
        self.assertTrue(c.warnings[0].startswith("p.conf:2: disable_load_balance_on_write"))
        self.assertIn("not supported by pgpool-tw", c.warnings[0])

    def test_bad_words_and_booleans(self) -> None:
        """A bad word or boolean is one line naming file, line, setting and the choices."""
        self.assertEqual(
            error("# c\ndisable_load_balance_on_write = sometimes\n"),
            "p.conf:2: disable_load_balance_on_write: invalid value 'sometimes'; "
            "expected off, transaction, trans_transaction, always or dml_adaptive",
        )
        self.assertEqual(
            error("log_standby_delay = never\n"),
            "p.conf:1: log_standby_delay: invalid value 'never'; "
            "expected none, always or if_over_threshold",
        )
        for name in (
            "load_balance_mode",
            "statement_level_load_balance",
            "allow_sql_comments",
            "prefer_lower_delay_standby",
            "log_per_node_statement",
            "read_your_writes",
        ):
            self.assertEqual(
                error(f"{name} = maybe\n"),
                f"p.conf:1: {name}: invalid value 'maybe'; "
                "expected on/off, true/false, yes/no or 1/0",
            )


class ClusteringModeTests(SynchronousTestCase):
    def test_supported_modes(self) -> None:
        """streaming_replication and raw are read as they are, ignoring case."""
        for text, mode in (
            ("backend_clustering_mode = 'streaming_replication'", "streaming_replication"),
            ("backend_clustering_mode = RAW", "raw"),
        ):
            c = parse_config(text)
            self.assertEqual((c.clustering_mode, c.warnings), (mode, ()))

    def test_unsupported_modes_run_as_raw_with_one_warning(self) -> None:
        """pgpool-II's other modes parse, run as raw, and warn once naming the mode."""
        for mode in ("native_replication", "logical_replication", "slony", "snapshot_isolation"):
            c = parse_config(f"port = 1\nbackend_clustering_mode = {mode}\n", "p.conf")
            self.assertEqual(c.clustering_mode, "raw")
            self.assertEqual(
                c.warnings,
                (
                    f"p.conf:2: clustering mode {mode} is not supported by pgpool-tw; running "
                    "as raw (every query goes to the primary backend)",
                ),
            )

    def test_bad_mode(self) -> None:
        """A word that is no pgpool-II mode is a one-line error."""
        self.assertEqual(
            error("backend_clustering_mode = stream\n"),
            "p.conf:1: backend_clustering_mode: invalid value 'stream'; expected "
            "streaming_replication, native_replication, logical_replication, slony, "
            "snapshot_isolation or raw",
        )

    def test_pre_4_2_spelling(self) -> None:
        """master_slave_mode/master_slave_sub_mode and replication_mode mean what they meant."""
        stream = parse_config("master_slave_mode = on\nmaster_slave_sub_mode = 'stream'\n")
        self.assertEqual((stream.clustering_mode, stream.warnings), ("streaming_replication", ()))
        off = parse_config("master_slave_mode = off\nreplication_mode = off\n")
        self.assertEqual((off.clustering_mode, off.warnings), ("raw", ()))
        for text, mode, line in (
            ("master_slave_mode = on\n", "slony", 1),  # pgpool-II's default sub mode
            ("master_slave_mode = on\nmaster_slave_sub_mode = logical\n", "logical_replication", 2),
            ("replication_mode = true\n", "native_replication", 1),
        ):
            c = parse_config(text, "p.conf")
            self.assertEqual(c.clustering_mode, "raw", text)
            self.assertEqual(len(c.warnings), 1, text)
            self.assertTrue(
                c.warnings[0].startswith(f"p.conf:{line}: clustering mode {mode} is not"), c
            )

    def test_new_spelling_wins_whatever_the_order(self) -> None:
        """backend_clustering_mode beats the old names, before or after them, with a warning."""
        old = "master_slave_mode = on\nmaster_slave_sub_mode = stream\n"
        new = "backend_clustering_mode = raw\n"
        for text, line in ((old + new, 3), (new + old, 1)):
            c = parse_config(text, "p.conf")
            self.assertEqual(c.clustering_mode, "raw")
            first = 2 if line == 1 else 1
            self.assertEqual(
                c.warnings,
                (
                    f"p.conf:{line}: backend_clustering_mode overrides master_slave_mode and "
                    f"master_slave_sub_mode set on line {first}; set only "
                    "backend_clustering_mode",
                ),
            )

    def test_bad_old_values(self) -> None:
        """The old names' values are checked like any other."""
        self.assertEqual(
            error("master_slave_sub_mode = 'streaming'\n"),
            "p.conf:1: master_slave_sub_mode: invalid value 'streaming'; "
            "expected stream, slony or logical",
        )
        self.assertIn("p.conf:1: replication_mode: invalid value", error("replication_mode = x"))


class FunctionListTests(SynchronousTestCase):
    def test_anchored_case_insensitive_patterns(self) -> None:
        """Each name is a pattern anchored with ^ and $ and matched ignoring case."""
        c = parse_config("write_function_list = 'nextval, set_.*,^get_x$'\n")
        self.assertEqual(patterns(c.write_function_list), ["^nextval$", "^set_.*$", "^get_x$"])
        nextval, set_, _ = c.write_function_list
        self.assertTrue(nextval.match("NEXTVAL"))
        self.assertFalse(nextval.match("my_nextval"))
        self.assertFalse(nextval.match("nextval2"))
        self.assertTrue(set_.match("set_config"))

    def test_backslash_kept_for_the_regex(self) -> None:
        """A backslash in a quoted list stays, as pgpool-II's reader keeps it."""
        c = parse_config("read_only_function_list = 'get_\\d+'  # digits\n")
        self.assertEqual(patterns(c.read_only_function_list), ["^get_\\d+$"])
        self.assertTrue(c.read_only_function_list[0].match("get_12"))
        self.assertFalse(c.read_only_function_list[0].match("get_d"))

    def test_posix_classes(self) -> None:
        """POSIX character classes, which pgpool-II's regex library takes, work here too."""
        c = parse_config("write_function_list = 'get_[[:digit:]]+,[[:alpha:]_]+x'\n")
        digits, alpha = c.write_function_list
        self.assertTrue(digits.match("get_42"))
        self.assertFalse(digits.match("get_x"))
        self.assertTrue(alpha.match("Set_Ax"))
        self.assertFalse(alpha.match("s1x"))

    def test_empty_list(self) -> None:
        """'' and a list of blanks are no patterns at all."""
        self.assertEqual(parse_config("write_function_list = ''").write_function_list, ())
        self.assertEqual(parse_config("write_function_list = ' , '").write_function_list, ())

    def test_old_names_are_synonyms(self) -> None:
        """black_function_list and white_function_list set the new fields; both names set
        give the usual 'overrides' warning."""
        c = parse_config("black_function_list = 'a'\nwhite_function_list = ''\n")
        self.assertEqual(patterns(c.write_function_list), ["^a$"])
        both = parse_config("black_function_list = 'a'\nwrite_function_list = 'b'\n", "p.conf")
        self.assertEqual(patterns(both.write_function_list), ["^b$"])
        self.assertEqual(
            both.warnings,
            (
                "p.conf:2: write_function_list overrides black_function_list set on line 1; "
                "set only one of them",
            ),
        )
        white = parse_config("white_function_list = 'f'\n")
        self.assertEqual(patterns(white.read_only_function_list), ["^f$"])

    def test_both_lists_set_warns(self) -> None:
        """pgpool-II allows only one of the two lists: write_function_list is kept."""
        c = parse_config("write_function_list = 'a'\nread_only_function_list = 'b'\n", "p.conf")
        self.assertEqual(patterns(c.write_function_list), ["^a$"])
        self.assertEqual(c.read_only_function_list, ())
        self.assertEqual(len(c.warnings), 1)
        self.assertTrue(c.warnings[0].startswith("p.conf:2: write_function_list and read_only"))

    def test_bad_pattern_is_one_line(self) -> None:
        """A pattern that does not compile stops the file at its line and setting."""
        self.assertEqual(
            error("\nwrite_function_list = 'ok,bad(x'\n"),
            "p.conf:2: write_function_list: invalid regular expression 'bad(x' "
            "(missing ), unterminated subpattern at position 3)",
        )
        self.assertTrue(
            error("white_function_list = '*'").startswith("p.conf:1: white_function_list: ")
        )


class QueryPatternTests(SynchronousTestCase):
    def test_semicolons_and_escapes(self) -> None:
        """';' separates patterns, '\\;' is a ';' inside one, "\\'" a quote (pgpool-II's docs)."""
        c = parse_config(
            "primary_routing_query_pattern_list = 'SELECT \\* FROM t1\\;;"
            "SELECT a FROM t2 WHERE a LIKE \\'%a%\\'\\;;.*t3.*'\n"
        )
        self.assertEqual(
            patterns(c.primary_routing_query_pattern_list),
            ["^SELECT \\* FROM t1\\;$", "^SELECT a FROM t2 WHERE a LIKE '%a%'\\;$", "^.*t3.*$"],
        )
        first, second, third = c.primary_routing_query_pattern_list
        self.assertTrue(first.match("select * from T1;"))
        self.assertFalse(first.match("SELECT * FROM t1; DROP TABLE x;"))
        self.assertTrue(second.match("SELECT a FROM t2 WHERE a LIKE '%a%';"))
        self.assertTrue(third.match("UPDATE t3 SET a = 1"))

    def test_trailing_separator_and_blanks(self) -> None:
        """A trailing ';' or an empty pattern adds nothing."""
        c = parse_config("primary_routing_query_pattern_list = 'a;;b;'\n")
        self.assertEqual(patterns(c.primary_routing_query_pattern_list), ["^a$", "^b$"])

    def test_old_name(self) -> None:
        """black_query_pattern_list is the old name of primary_routing_query_pattern_list."""
        c = parse_config("black_query_pattern_list = 'x'\n")
        self.assertEqual(patterns(c.primary_routing_query_pattern_list), ["^x$"])

    def test_bad_pattern(self) -> None:
        """A bad SQL pattern is a one-line error naming the setting."""
        self.assertEqual(
            error("primary_routing_query_pattern_list = 'ok;[x'\n"),
            "p.conf:1: primary_routing_query_pattern_list: invalid regular expression '[x' "
            "(unterminated character set at position 0)",
        )


class RedirectTests(SynchronousTestCase):
    def test_pgpool_ii_example(self) -> None:
        """The docs' example reads into (pattern, target, weight) entries in order."""
        c = parse_config(
            "database_redirect_preference_list = 'postgres:primary,mydb[01]:1(0.3),mydb2:standby'"
        )
        rules = c.database_redirect_preference_list
        self.assertEqual(
            [(r.pattern.pattern, r.target, r.weight) for r in rules],
            [("^postgres$", "primary", 1.0), ("^mydb[01]$", 1, 0.3), ("^mydb2$", "standby", 1.0)],
        )
        self.assertTrue(rules[1].matches("MYDB0"))
        self.assertFalse(rules[1].matches("mydb01"))

    def test_three_lists(self) -> None:
        """user_, database_ and app_name_redirect_preference_list are all read."""
        c = parse_config(
            "user_redirect_preference_list = 'u.*:0'\n"
            "database_redirect_preference_list = 'd:Standby(0)'\n"
            "app_name_redirect_preference_list = ' psql : PRIMARY ( 1 ) '\n"
        )
        self.assertEqual(c.user_redirect_preference_list[0].target, 0)
        self.assertEqual(
            (
                c.database_redirect_preference_list[0].target,
                c.database_redirect_preference_list[0].weight,
            ),
            ("standby", 0.0),
        )
        app = c.app_name_redirect_preference_list[0]
        self.assertEqual((app.pattern.pattern, app.target, app.weight), ("^psql$", "primary", 1.0))

    def test_frozen_and_comparable(self) -> None:
        """Entries are frozen and compare by value, so equal files give equal Configs."""
        text = "database_redirect_preference_list = 'a:1(0.5)'"
        self.assertEqual(parse_config(text), parse_config(text))
        self.assertNotEqual(parse_config(text), Config())
        rule = parse_redirect_list("a:1")[0]
        self.assertIsInstance(rule, Redirect)
        self.assertRaises(AttributeError, setattr, rule, "weight", 0.5)

    def test_bad_entries(self) -> None:
        """Each bad entry is one line naming the file, line, setting and what is wrong."""
        name = "database_redirect_preference_list"
        for value, words in (
            ("postgres", "invalid entry 'postgres'; expected 'name:node' or 'name:node(weight)'"),
            (":1", "invalid entry ':1'; expected 'name:node' or 'name:node(weight)'"),
            (
                "a:",
                "invalid node '' in 'a:'" + NODES,
            ),
            (
                "a:128",
                "invalid node '128' in 'a:128'" + NODES,
            ),
            (
                "a:-1",
                "invalid node '-1' in 'a:-1'" + NODES,
            ),
            (
                "a:main",
                "invalid node 'main' in 'a:main'" + NODES,
            ),
            ("a:1(1.5)", "invalid weight '1.5' in 'a:1(1.5)'; expected a number from 0 to 1"),
            ("a:1(x)", "invalid weight 'x' in 'a:1(x)'; expected a number from 0 to 1"),
            ("a:1(-0)", "invalid weight '-0' in 'a:1(-0)'; expected a number from 0 to 1"),
            ("a:1(0.5", "invalid entry 'a:1(0.5'; the weight needs a closing ')'"),
            (
                "a(:1",
                "invalid regular expression 'a(' "
                "(missing ), unterminated subpattern at position 1)",
            ),
        ):
            self.assertEqual(error(f"{name} = '{value}'\n"), f"p.conf:1: {name}: {words}")

    @given(st.text(max_size=40))
    def test_any_text_parses_or_fails_cleanly(self, text: str) -> None:
        """Any text gives entries or a BadValue with a one-line message, nothing else."""
        try:
            rules = parse_redirect_list(text)
        except values.BadValue as e:
            self.assertNotIn("\n", str(e).replace(repr(text), ""))
            return
        for rule in rules:
            self.assertTrue(0.0 <= rule.weight <= 1.0)


class ReplicationCheckTests(SynchronousTestCase):
    def test_delay_threshold_bytes(self) -> None:
        """delay_threshold is bytes, with PostgreSQL's memory units."""
        for text, expected in (("0", 0), ("1000", 1000), ("'16MB'", 16 * 1024**2), ("2kB", 2048)):
            self.assertEqual(parse_config(f"delay_threshold = {text}").delay_threshold, expected)
        for bad in ("-1", "1.5", "16mb", "x"):
            self.assertEqual(
                error(f"delay_threshold = '{bad}'"),
                f"p.conf:1: delay_threshold: invalid value '{bad}'; expected a number of bytes "
                ">= 0, or with a unit B, kB, MB, GB or TB",
            )

    def test_delay_threshold_by_time_milliseconds(self) -> None:
        """delay_threshold_by_time counts milliseconds unless a unit is given; kept in seconds."""
        for text, seconds in (("0", 0.0), ("1500", 1.5), ("10s", 10.0), ("'1 min'", 60.0)):
            c = parse_config(f"delay_threshold_by_time = {text}")
            self.assertEqual(c.delay_threshold_by_time, seconds)
        self.assertEqual(
            error("delay_threshold_by_time = '-5'"),
            "p.conf:1: delay_threshold_by_time: invalid value '-5'; expected a time >= 0 in "
            "milliseconds, or with a unit ms, s, min, h or d (e.g. 10s)",
        )

    def test_sr_check_period_seconds(self) -> None:
        """sr_check_period is seconds (0 is off), with the usual time units."""
        self.assertEqual(parse_config("sr_check_period = 0").sr_check_period, 0)
        self.assertEqual(parse_config("sr_check_period = 2min").sr_check_period, 120)
        self.assertTrue(error("sr_check_period = soon").startswith("p.conf:1: sr_check_period: "))


class RawValueTests(SynchronousTestCase):
    def test_quoted_value_kept_as_written(self) -> None:
        """Only the quotes are stripped from a quoted value; backslashes stay."""
        self.assertEqual(raw_value("a = 'x\\d\\;y' # c", "xd;y"), "x\\d\\;y")
        self.assertEqual(raw_value("  a 'x\\'y'", "x'y"), "x\\'y")

    def test_unquoted_or_doubled_quote_falls_back(self) -> None:
        """An unquoted value, or one using '', is the syntax's own reading."""
        self.assertEqual(raw_value("a = abc", "abc"), "abc")
        self.assertEqual(raw_value("a = 'it''s'", "it's"), "it's")

    def test_anchored(self) -> None:
        """pgpool-II's anchoring adds only what is missing."""
        self.assertEqual(
            [anchored(p) for p in ("a", "^a", "a$", "^a$", "")], ["^a$", "^a$", "^a$", "^a$", "^$"]
        )
        self.assertIn("primary_routing_query_pattern_list", routing.REGEX_SETTINGS)
