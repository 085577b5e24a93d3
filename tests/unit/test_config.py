"""pgpool_tw.config.settings: pgpool.conf syntax, values, backends, warnings and errors."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster import cluster
from pgpool_tw.config import backends, health, pgpool2_names, report, routing, syntax, values
from pgpool_tw.config import settings as config
from pgpool_tw.config.health import HEALTH_CHECK_KEYS
from pgpool_tw.config.settings import (
    RESTART_REQUIRED,
    BackendNode,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "etc", "pgpool.conf.sample")


class DefaultsTests(SynchronousTestCase):
    def test_empty_file_gives_defaults(self) -> None:
        """An empty file yields pgpool-II's defaults and no warnings."""
        parsed = parse_config("")
        self.assertEqual(parsed, Config())
        self.assertEqual(parsed.listen_addresses, ("localhost",))
        self.assertEqual(parsed.port, 9999)
        self.assertEqual(parsed.socket_dirs, ("/tmp",))
        self.assertEqual(parsed.backends, ())
        self.assertEqual(parsed.num_init_children, 32)
        self.assertEqual(parsed.max_pool, 4)
        self.assertEqual(parsed.child_life_time, 300)
        self.assertEqual(parsed.child_max_connections, 0)
        self.assertEqual(parsed.connection_life_time, 0)
        self.assertEqual(parsed.client_idle_limit, 0)
        self.assertEqual(parsed.authentication_timeout, 60)
        self.assertTrue(parsed.connection_cache)
        self.assertEqual(parsed.reset_query_list, ("ABORT", "DISCARD ALL"))
        self.assertFalse(parsed.log_connections)
        self.assertEqual(parsed.warnings, ())
        self.assertIsNone(parsed.path)

    def test_blank_and_comment_lines(self) -> None:
        """Blank lines, whitespace-only lines and comment lines are ignored."""
        self.assertEqual(parse_config("\n   \n# port = 1\n\t# x\n"), Config())

    def test_config_is_frozen(self) -> None:
        """A Config cannot be changed after it is built."""
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, Config(), "port", 1)

    def test_restart_required_names_fields(self) -> None:
        """RESTART_REQUIRED lists the listening and backend fields and pgpool-II's start-only
        settings, all real Config fields."""
        names = {f.name for f in dataclasses.fields(Config)}
        self.assertEqual(
            RESTART_REQUIRED,
            {
                "listen_addresses",
                "port",
                "socket_dirs",
                "metrics_listen_addresses",
                "metrics_port",
                "pcp_listen_addresses",
                "pcp_port",
                "pcp_socket_dirs",
                "so_reuseport",
                "backends",
                "clustering_mode",
                "load_balance_mode",
                "logdir",
                "log_destination",
            },
        )
        self.assertTrue(names >= RESTART_REQUIRED)

    def test_module_does_not_import_twisted(self) -> None:
        """The config parsing modules and the cluster import neither Twisted nor logging."""
        modules = (config, syntax, values, backends, health, pgpool2_names, report, routing)
        for module in (*modules, cluster):
            self.assertNoTwisted(module.__file__ or "")

    def assertNoTwisted(self, path: str) -> None:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                self.assertFalse(module.startswith(("twisted", "logging")), (path, module))


class SettingTests(SynchronousTestCase):
    def assertSetting(self, text: str, field: str, expected: object) -> None:
        parsed = parse_config(text)
        self.assertEqual(getattr(parsed, field), expected, text)
        self.assertEqual(parsed.warnings, (), text)

    def test_each_setting(self) -> None:
        """Every supported setting is read into its field with its type."""
        cases = [
            ("listen_addresses = '127.0.0.1'", "listen_addresses", ("127.0.0.1",)),
            ("port = 6432", "port", 6432),
            ("socket_dir = '/var/run/pgpool'", "socket_dirs", ("/var/run/pgpool",)),
            ("unix_socket_directories = '/a, /b'", "socket_dirs", ("/a", "/b")),
            ("num_init_children = 100", "num_init_children", 100),
            ("max_pool = 2", "max_pool", 2),
            ("child_life_time = 10", "child_life_time", 10.0),
            ("child_max_connections = 7", "child_max_connections", 7),
            ("connection_life_time = 30", "connection_life_time", 30.0),
            ("client_idle_limit = 5", "client_idle_limit", 5.0),
            ("authentication_timeout = 0", "authentication_timeout", 0.0),
            ("connection_cache = off", "connection_cache", False),
            ("reset_query_list = 'ABORT'", "reset_query_list", ("ABORT",)),
            ("log_connections = on", "log_connections", True),
            ("drain_timeout = '2min'", "drain_timeout", 120.0),
            ("so_reuseport = on", "so_reuseport", True),
        ]
        for text, field, expected in cases:
            self.assertSetting(text, field, expected)

    def test_numbers_may_be_quoted(self) -> None:
        """A number written as a quoted string is read as the number."""
        self.assertSetting("port = '6432'", "port", 6432)

    def test_port_zero(self) -> None:
        """port = 0 is allowed, meaning any free port."""
        self.assertSetting("port = 0", "port", 0)

    def test_listen_addresses_lists(self) -> None:
        """listen_addresses is a comma list; '*' is kept and '' means none."""
        self.assertSetting("listen_addresses = '*'", "listen_addresses", ("*",))
        self.assertSetting("listen_addresses = ''", "listen_addresses", ())
        self.assertSetting(
            "listen_addresses = ' localhost ,, ::1 '", "listen_addresses", ("localhost", "::1")
        )

    def test_empty_socket_dirs(self) -> None:
        """An empty socket directory list means no Unix socket."""
        self.assertSetting("socket_dir = ''", "socket_dirs", ())

    def test_reset_query_list_split(self) -> None:
        """reset_query_list is split on ';', stripped, with empty statements dropped."""
        self.assertSetting(
            "reset_query_list = ' ABORT ;; DISCARD ALL; '",
            "reset_query_list",
            ("ABORT", "DISCARD ALL"),
        )
        self.assertSetting("reset_query_list = ''", "reset_query_list", ())

    def test_names_case_insensitive(self) -> None:
        """Setting names match whatever their case."""
        self.assertSetting("Num_Init_Children = 5", "num_init_children", 5)

    def test_without_equals(self) -> None:
        """'name value' without '=' is accepted, as in postgresql.conf."""
        self.assertSetting("port 6543", "port", 6543)
        self.assertSetting("listen_addresses '*'", "listen_addresses", ("*",))

    def test_no_spaces_around_equals(self) -> None:
        """'name=value' with no spaces is accepted."""
        self.assertSetting("port=6543", "port", 6543)

    def test_last_duplicate_wins(self) -> None:
        """The same setting twice: the last one wins, without a warning."""
        self.assertSetting("port = 1\nport = 2\n", "port", 2)

    def test_crlf_line_endings(self) -> None:
        """Files with CRLF line endings parse like LF files."""
        parsed = parse_config("port = 1\r\nmax_pool = 3\r\n")
        self.assertEqual((parsed.port, parsed.max_pool), (1, 3))

    def test_socket_synonyms_later_wins_with_warning(self) -> None:
        """socket_dir and unix_socket_directories both set: the later wins, with a warning."""
        parsed = parse_config("unix_socket_directories = '/a'\nsocket_dir = '/b'\n", "x.conf")
        self.assertEqual(parsed.socket_dirs, ("/b",))
        self.assertEqual(len(parsed.warnings), 1)
        self.assertIn("x.conf:2:", parsed.warnings[0])
        self.assertIn("unix_socket_directories", parsed.warnings[0])


class QuotingTests(SynchronousTestCase):
    def hostname(self, text: str) -> str:
        return parse_config(f"backend_hostname0 = {text}").backends[0].hostname

    def test_doubled_quote(self) -> None:
        """A doubled '' inside a quoted string is one quote."""
        self.assertEqual(self.hostname("'it''s'"), "it's")

    def test_backslash_quote(self) -> None:
        """A backslash-escaped quote inside a quoted string is one quote."""
        self.assertEqual(self.hostname(r"'it\'s'"), "it's")

    def test_backslash_escapes(self) -> None:
        """Backslash escapes follow PostgreSQL: letters, octal, any other char is itself."""
        self.assertEqual(self.hostname(r"'a\nb\tc\\d\101\q'"), "a\nb\tc\\dAq")

    def test_hash_inside_quotes(self) -> None:
        """A '#' inside quotes is part of the value, not a comment."""
        self.assertEqual(self.hostname("'a#b' # real comment"), "a#b")

    def test_comment_after_value(self) -> None:
        """A comment after an unquoted value is ignored, with or without a space."""
        self.assertEqual(parse_config("port = 5 # five").port, 5)
        self.assertEqual(parse_config("port = 5#five").port, 5)

    def test_unquoted_path(self) -> None:
        """An unquoted token may hold slashes, dots and dashes."""
        self.assertEqual(self.hostname("/var/run/postgresql"), "/var/run/postgresql")
        self.assertEqual(self.hostname("db-1.example.com"), "db-1.example.com")

    def test_empty_quoted_string(self) -> None:
        """'' is an empty string value."""
        self.assertEqual(parse_config("listen_addresses = ''").listen_addresses, ())


class TimeTests(SynchronousTestCase):
    def test_units(self) -> None:
        """Time settings take seconds or a number with ms, s, min, h or d."""
        cases = [
            ("30", 30.0),
            ("2.5", 2.5),
            ("1500ms", 1.5),
            ("45s", 45.0),
            ("5min", 300.0),
            ("'5min'", 300.0),
            ("'5 min'", 300.0),
            ("1.5min", 90.0),
            ("2h", 7200.0),
            ("1d", 86400.0),
            ("0", 0.0),
        ]
        for text, seconds in cases:
            for name in (
                "child_life_time",
                "connection_life_time",
                "client_idle_limit",
                "authentication_timeout",
            ):
                self.assertEqual(getattr(parse_config(f"{name} = {text}"), name), seconds, text)

    def test_bad_times_refused(self) -> None:
        """Negative times, unknown or wrongly-cased units and words are refused."""
        for text in ("-1", "'-5min'", "5 weeks", "5MIN", "5m", "soon", "''", "1e999"):
            error = self.assertRaises(ConfigError, parse_config, f"client_idle_limit = {text}")
            self.assertIn("client_idle_limit", str(error))

    def test_unquoted_space_before_unit_refused(self) -> None:
        """An unquoted '5 min' is a syntax error: values with spaces must be quoted."""
        self.assertRaises(ConfigError, parse_config, "client_idle_limit = 5 min")


class BooleanTests(SynchronousTestCase):
    def test_spellings(self) -> None:
        """on/off, true/false, yes/no and 1/0 are booleans in any case."""
        for text, value in [
            ("on", True),
            ("OFF", False),
            ("True", True),
            ("false", False),
            ("yes", True),
            ("No", False),
            ("1", True),
            ("0", False),
            ("'on'", True),
        ]:
            self.assertEqual(parse_config(f"log_connections = {text}").log_connections, value)

    def test_other_words_refused(self) -> None:
        """Prefixes and other words are not booleans."""
        for text in ("of", "t", "maybe", "2", "''"):
            self.assertRaises(ConfigError, parse_config, f"connection_cache = {text}")


class BackendTests(SynchronousTestCase):
    def test_sparse_nodes_sorted(self) -> None:
        """Nodes 2 and 0 given out of order come back sorted by index, with defaults."""
        parsed = parse_config(
            "backend_hostname2 = 'db2'\n"
            "backend_port2 = 5433\n"
            "backend_weight2 = 0.5\n"
            "backend_hostname0 = 'db0'\n"
        )
        self.assertEqual(
            parsed.backends,
            (BackendNode(0, "db0", 5432, 1.0), BackendNode(2, "db2", 5433, 0.5)),
        )
        self.assertEqual(parsed.primary_backend, BackendNode(0, "db0"))
        self.assertEqual(parsed.warnings, ())

    def test_no_primary_without_backends(self) -> None:
        """primary_backend is None when there are no backends."""
        self.assertIsNone(Config().primary_backend)

    def test_empty_hostname_is_no_node(self) -> None:
        """A node whose backend_hostnameN is '' does not exist."""
        self.assertEqual(parse_config("backend_hostname0 = ''").backends, ())

    def test_port_or_weight_without_hostname_warns(self) -> None:
        """A port or weight for a node with no hostname is ignored with a warning per line."""
        parsed = parse_config(
            "backend_hostname0 = 'a'\nbackend_port1 = 5433\nbackend_weight1 = 2\n", "p.conf"
        )
        self.assertEqual(parsed.backends, (BackendNode(0, "a"),))
        self.assertEqual(len(parsed.warnings), 2)
        self.assertTrue(parsed.warnings[0].startswith("p.conf:2: backend_port1 ignored"))
        self.assertTrue(parsed.warnings[1].startswith("p.conf:3: backend_weight1 ignored"))

    def test_other_backend_keys_read(self) -> None:
        """backend_data_directoryN, backend_flagN and backend_application_nameN are read."""
        parsed = parse_config(
            "backend_hostname0 = 'a'\n"
            "backend_data_directory0 = '/data'\n"
            "backend_flag0 = 'DISALLOW_TO_FAILOVER'\n"
            "backend_application_name0 = 'server0'\n"
        )
        self.assertEqual(parsed.warnings, ())
        self.assertEqual(
            parsed.backends,
            (
                BackendNode(
                    0,
                    "a",
                    data_directory="/data",
                    application_name="server0",
                    allow_to_failover=False,
                ),
            ),
        )

    def test_flag_words(self) -> None:
        """backend_flagN takes pgpool-II's words, combined with '|' and spaces around them."""
        cases = {
            "''": (True, False),
            "ALLOW_TO_FAILOVER": (True, False),
            "DISALLOW_TO_FAILOVER": (False, False),
            "ALWAYS_PRIMARY": (True, True),
            "'DISALLOW_TO_FAILOVER | ALWAYS_PRIMARY'": (False, True),
            "'ALWAYS_PRIMARY|ALLOW_TO_FAILOVER'": (True, True),
        }
        for text, (allow, always) in cases.items():
            node = parse_config(f"backend_hostname0 = a\nbackend_flag0 = {text}").backends[0]
            self.assertEqual((node.allow_to_failover, node.always_primary), (allow, always), text)

    def test_flag_shown_as_pgpool_ii_shows_it(self) -> None:
        """A node's flag reads back in pgpool-II's spelling."""
        self.assertEqual(BackendNode(0, "a").flag, "ALLOW_TO_FAILOVER")
        node = BackendNode(0, "a", allow_to_failover=False, always_primary=True)
        self.assertEqual(node.flag, "DISALLOW_TO_FAILOVER|ALWAYS_PRIMARY")

    def test_bad_flags(self) -> None:
        """Unknown or lower-case words, and ALLOW with DISALLOW, are one-line errors."""
        for text in ("allow_to_failover", "NOPE", "'ALLOW_TO_FAILOVER|DISALLOW_TO_FAILOVER'"):
            error = self.assertRaises(
                ConfigError, parse_config, f"# c\nbackend_flag3 = {text}", "my.conf"
            )
            message = str(error)
            self.assertTrue(message.startswith("my.conf:2: backend_flag3: invalid value"), message)
            self.assertIn("ALLOW_TO_FAILOVER or DISALLOW_TO_FAILOVER", message)
            self.assertNotIn("\n", message)

    def test_highest_node_number(self) -> None:
        """Node 127 is allowed; node 128 is refused."""
        self.assertEqual(parse_config("backend_hostname127 = h").backends[0].index, 127)
        error = self.assertRaises(ConfigError, parse_config, "backend_hostname128 = h")
        self.assertIn("backend_hostname128", str(error))

    def test_bad_backend_values(self) -> None:
        """Backend ports outside 1..65535 and negative weights are refused."""
        for text in ("backend_port0 = 0", "backend_port0 = 65536", "backend_weight0 = -1"):
            self.assertRaises(ConfigError, parse_config, text)

    def test_tcp_address(self) -> None:
        """A TCP node's address is host:port, with brackets for IPv6."""
        self.assertEqual(BackendNode(0, "db", 5433).address, "db:5433")
        self.assertFalse(BackendNode(0, "db").is_unix)
        self.assertEqual(BackendNode(0, "::1").address, "[::1]:5432")

    def test_unix_address(self) -> None:
        """A hostname starting with '/' is a socket directory, addressed by its socket file."""
        node = BackendNode(0, "/var/run/postgresql/", 5433)
        self.assertTrue(node.is_unix)
        self.assertEqual(node.address, "/var/run/postgresql/.s.PGSQL.5433")


class WarningTests(SynchronousTestCase):
    def test_misspelt_name_suggests_nearest(self) -> None:
        """A misspelt name gets its own line with the nearest known name, node number kept."""
        parsed = parse_config("max_pol = 3\nbackend_hostnme1 = h\nhealth_check_perod = 5\n")
        self.assertEqual(
            parsed.warnings,
            (
                "pgpool.conf:1: unknown setting 'max_pol' ignored; did you mean 'max_pool'?",
                "pgpool.conf:2: unknown setting 'backend_hostnme1' ignored; "
                "did you mean 'backend_hostname1'?",
                "pgpool.conf:3: unknown setting 'health_check_perod' ignored; "
                "did you mean 'health_check_period'?",
            ),
        )

    def test_pgpool_ii_names_do_not_warn_per_line(self) -> None:
        """pgpool-II names, numbered ones too, load without a line warning each."""
        parsed = parse_config(
            "load_balance_mode = on\nheartbeat_port0 = 9694\nheartbeat_hostname2 = h\n"
            "wd_port1 = 9000\nrecovery_1st_stage_command = ''\ndelegate_IP = ''\n"
        )
        self.assertEqual(parsed.warnings, ())
        self.assertEqual(dict(parsed.given)["heartbeat_port0"], "9694")

    def test_unknown_setting_warns(self) -> None:
        """An unknown setting is ignored with a warning naming file, line and setting."""
        parsed = parse_config("port = 1\n\n\n\n\n\nfoo = 3\n", "pgpool.conf")
        self.assertEqual(parsed.port, 1)
        self.assertEqual(parsed.warnings, ("pgpool.conf:7: unknown setting 'foo' ignored",))

    def test_unknown_backend_key_warns(self) -> None:
        """An unknown backend_* key, or one with a leading zero, is an unknown setting."""
        parsed = parse_config("backend_color0 = red\nbackend_hostname01 = h\n")
        self.assertEqual(len(parsed.warnings), 2)
        self.assertEqual(parsed.backends, ())

    def test_warnings_in_line_order(self) -> None:
        """Warnings are listed in the order of their lines."""
        parsed = parse_config("backend_port3 = 1\nzzz = 1\n")
        self.assertEqual([w.split(":")[1] for w in parsed.warnings], ["1", "2"])


class ErrorTests(SynchronousTestCase):
    def assertOneLineError(self, text: str, line: int, setting: str) -> str:
        error = self.assertRaises(ConfigError, parse_config, text, "my.conf")
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"my.conf:{line}: "), message)
        self.assertIn(setting, message)
        return message

    def test_exact_message(self) -> None:
        """A bad value names file, line, setting, the value and what is allowed."""
        error = self.assertRaises(
            ConfigError, parse_config, "\n" * 11 + "num_init_children = abc\n"
        )
        self.assertEqual(
            str(error),
            "pgpool.conf:12: num_init_children: invalid value 'abc'; "
            "expected an integer from 1 to 10000",
        )

    def test_bad_values(self) -> None:
        """Each kind of bad value is one line with file, line number and setting name."""
        cases = [
            ("num_init_children = 0", "num_init_children"),
            ("num_init_children = 10001", "num_init_children"),
            ("num_init_children = 1.5", "num_init_children"),
            ("num_init_children = 1_0", "num_init_children"),
            ("max_pool = 0", "max_pool"),
            ("max_pool = 10001", "max_pool"),
            ("port = -1", "port"),
            ("port = 65536", "port"),
            ("child_max_connections = -1", "child_max_connections"),
            ("backend_weight0 = nan", "backend_weight0"),
            ("log_connections = sometimes", "log_connections"),
            ("child_life_time = -5", "child_life_time"),
        ]
        for text, setting in cases:
            message = self.assertOneLineError("# c\n" + text, 2, setting)
            self.assertIn("expected", message)

    def test_value_with_newline_stays_one_line(self) -> None:
        """A bad value holding an escaped newline is shown escaped, keeping one line."""
        self.assertOneLineError(r"port = 'a\nb'", 1, "port")

    def test_unterminated_quote(self) -> None:
        """An unterminated quoted string is a syntax error naming the line and setting."""
        message = self.assertOneLineError(
            "port = 1\nlisten_addresses = 'abc\n", 2, "listen_addresses"
        )
        self.assertIn("unterminated", message)

    def test_trailing_backslash_unterminated(self) -> None:
        """A quote escaped by a backslash at the end of the line leaves the string open."""
        self.assertOneLineError("backend_hostname0 = 'abc\\'", 1, "backend_hostname0")

    def test_missing_value(self) -> None:
        """A name with no value, with or without '=', is a syntax error."""
        self.assertOneLineError("port", 1, "port")
        self.assertOneLineError("port =", 1, "port")
        self.assertOneLineError("port = # nothing", 1, "port")

    def test_text_after_value(self) -> None:
        """Unquoted text after the value is a syntax error."""
        self.assertOneLineError("listen_addresses = a b", 1, "listen_addresses")
        self.assertOneLineError("listen_addresses = 'a' b", 1, "listen_addresses")

    def test_line_without_name(self) -> None:
        """A line that does not start with a setting name is a syntax error naming the line."""
        error = self.assertRaises(ConfigError, parse_config, "\n= 5\n", "my.conf")
        self.assertTrue(str(error).startswith("my.conf:2: "))

    def test_unknown_setting_value_checked_for_syntax(self) -> None:
        """An unknown setting with a broken value is still a syntax error."""
        self.assertOneLineError("foo = 'open", 1, "foo")


class LoadTests(SynchronousTestCase):
    def test_missing_file(self) -> None:
        """load_config on a missing file raises a one-line ConfigError naming the path."""
        path = os.path.join(self.mktemp(), "missing.conf")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertTrue(str(error).startswith(f"{path}: cannot read: "))
        self.assertNotIn("\n", str(error))

    def test_loads_and_sets_path(self) -> None:
        """load_config parses the file, sets path, and names the path in warnings."""
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as handle:
            handle.write("port = 7000\nbogus = 1\n")
        self.addCleanup(os.remove, handle.name)
        parsed = load_config(handle.name)
        self.assertEqual(parsed.port, 7000)
        self.assertEqual(parsed.path, handle.name)
        self.assertEqual(parsed.warnings, (f"{handle.name}:2: unknown setting 'bogus' ignored",))

    def test_errors_name_the_path(self) -> None:
        """A bad value in a loaded file names that file."""
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as handle:
            handle.write("max_pool = 0\n")
        self.addCleanup(os.remove, handle.name)
        error = self.assertRaises(ConfigError, load_config, handle.name)
        self.assertTrue(str(error).startswith(f"{handle.name}:1: max_pool: "))

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
        with tempfile.NamedTemporaryFile("wb", suffix=".conf", delete=False) as handle:
            handle.write(b"port = '\xff'\n")
        self.addCleanup(os.remove, handle.name)
        self.assertRaises(ConfigError, load_config, handle.name)


class SampleTests(SynchronousTestCase):
    # Fields whose setting name differs from the field name.
    SETTING_FOR_FIELD = {
        "socket_dirs": "unix_socket_directories",
        "backends": "backend_hostname0",
        "clustering_mode": "backend_clustering_mode",
        "health_check": "health_check_period",
        "pcp_socket_dirs": "pcp_socket_dir",
    }

    def test_sample_parses_without_warnings(self) -> None:
        """The sample parses with no warnings into the defaults plus one local backend."""
        parsed = load_config(SAMPLE)
        self.assertEqual(parsed.warnings, ())
        here = os.path.dirname(os.path.abspath(SAMPLE))
        expected = Config(
            path=SAMPLE,
            backends=(BackendNode(0, "localhost", 5432, 1.0),),
            pool_hba_file=os.path.join(here, "pool_hba.conf"),
            pool_passwd=os.path.join(here, "pool_passwd"),
        )
        self.assertEqual(parsed, expected)

    def test_auth_files_resolved_beside_the_config(self) -> None:
        """Relative pool_hba_file and pool_passwd are taken from pgpool.conf's directory."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pgpool.conf")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write("pool_hba_file = 'hba/rules'\npool_passwd = ''\n")
            parsed = load_config(path)
        self.assertEqual(parsed.pool_hba_file, os.path.join(tmp, "hba", "rules"))
        self.assertEqual(parsed.pool_passwd, "")

    def test_sample_mentions_every_field(self) -> None:
        """Every Config field (except path, warnings, given) has a setting in the sample."""
        with open(SAMPLE, encoding="utf-8") as handle:
            text = handle.read()
        for field in dataclasses.fields(Config):
            if field.name in ("path", "warnings", "given", "health_check_nodes"):
                continue
            name = self.SETTING_FOR_FIELD.get(field.name, field.name)
            self.assertTrue(
                re.search(rf"^{name}\s*=", text, re.MULTILINE), f"{name} missing from sample"
            )
        self.assertTrue(re.search(r"^\s*#\s*socket_dir\s*=", text, re.MULTILINE))
        # health_check_nodes: every health check name, and a numbered one commented out.
        for name in HEALTH_CHECK_KEYS:
            self.assertTrue(re.search(rf"^{name}\s*=", text, re.MULTILINE), name)
        self.assertTrue(re.search(r"^#health_check_period1\s*=", text, re.MULTILINE))

    def test_sample_lists_every_recognised_pgpool_ii_name(self) -> None:
        """The sample's closing list names every pgpool-II setting recognised but not used."""
        with open(SAMPLE, encoding="utf-8") as handle:
            text = handle.read()
        listed = set(re.findall(r"[A-Za-z_0-9]+", text[text.index("RECOGNISED BUT NOT USED") :]))
        for feature in pgpool2_names.FEATURES:
            names = list(feature.settings) + ([feature.switch[0]] if feature.switch else [])
            for name in names:
                indexed = pgpool2_names.indexed_base(name + "0") == name
                self.assertIn(name + "n" if indexed else name, {n.lower() for n in listed}, name)

    def test_sample_second_node_commented_out_as_documented(self) -> None:
        """Uncommenting the sample's second server adds node 1 and nothing else."""
        with open(SAMPLE, encoding="utf-8") as handle:
            text = handle.read()
        parsed = parse_config(re.sub(r"(?m)^#(backend_[a-z_]+1 =)", r"\1", text))
        self.assertEqual([node.index for node in parsed.backends], [0, 1])
        self.assertEqual(parsed.warnings, ())


class PropertyTests(SynchronousTestCase):
    @given(st.integers(min_value=1, max_value=10000))
    def test_num_init_children_in_range(self, value: int) -> None:
        """Any integer from 1 to 10000 round-trips through num_init_children."""
        self.assertEqual(parse_config(f"num_init_children = {value}").num_init_children, value)

    @given(st.one_of(st.integers(max_value=0), st.integers(min_value=10001)))
    def test_num_init_children_out_of_range(self, value: int) -> None:
        """Any integer outside 1 to 10000 is refused for num_init_children."""
        self.assertRaises(ConfigError, parse_config, f"num_init_children = {value}")

    @given(st.text())
    def test_any_text_parses_or_fails_cleanly(self, text: str) -> None:
        """Arbitrary text either parses or raises a one-line ConfigError, nothing else."""
        try:
            parse_config(text)
        except ConfigError as error:
            self.assertNotIn("\n", str(error))
