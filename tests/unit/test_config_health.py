"""pgpool_tw.config.health and the failover settings: defaults, units, per-node values."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.health import HEALTH_CHECK_KEYS, HealthCheckSettings, health_check_key
from pgpool_tw.config.settings import Config, ConfigError, field_of, load_config, parse_config

#: Debian's stock pgpool.conf (package pgpool2); scripts/test unpacks it when it is missing.
DEBIAN_SAMPLE = os.environ.get(
    "PGPOOL2_SAMPLE", "/usr/share/doc/pgpool2/examples/pgpool.conf.sample"
)

TWO_NODES = "backend_hostname0 = a\nbackend_hostname1 = b\n"

#: (field, pgpool-II's default) of the failover settings on Config.
FAILOVER_DEFAULTS = [
    ("failover_command", ""),
    ("failback_command", ""),
    ("follow_primary_command", ""),
    ("failover_on_backend_error", True),
    ("failover_on_backend_shutdown", False),
    ("detach_false_primary", False),
    ("search_primary_node_timeout", 300.0),
    ("auto_failback", False),
    ("auto_failback_interval", 60.0),
    ("logdir", "/tmp"),
]


class DefaultTests(SynchronousTestCase):
    def test_health_check_defaults_are_pgpool_ii_s(self) -> None:
        """An empty file gives pgpool-II's health check defaults, in seconds."""
        settings = parse_config("").health_check
        self.assertEqual(settings, HealthCheckSettings())
        self.assertEqual(
            (settings.period, settings.timeout, settings.user, settings.password),
            (0.0, 20.0, "nobody", ""),
        )
        self.assertEqual(
            (settings.database, settings.max_retries, settings.retry_delay),
            ("", 0, 1.0),
        )
        self.assertEqual(settings.connect_timeout, 10.0)  # pgpool-II's 10000 ms

    def test_failover_defaults_are_pgpool_ii_s(self) -> None:
        """An empty file gives pgpool-II's failover defaults and no per-node settings."""
        config = parse_config("")
        for field, default in FAILOVER_DEFAULTS:
            self.assertEqual(getattr(config, field), default, field)
        self.assertEqual(config.health_check_nodes, ())
        self.assertEqual(config.health_check_for(0), HealthCheckSettings())

    def test_debian_stock_values_are_the_defaults(self) -> None:
        """Debian's pgpool.conf with every line uncommented (pgpool-II's own values, node 0's
        numbered ones too) gives exactly the defaults."""
        if not os.path.exists(DEBIAN_SAMPLE):
            raise self.skipTest(f"{DEBIAN_SAMPLE} missing (scripts/test installs pgpool2)")
        with open(DEBIAN_SAMPLE, encoding="utf-8") as handle:
            text = re.sub(r"(?m)^#([a-z_0-9]+\s*=)", r"\1", handle.read())
        config = parse_config(text)
        self.assertEqual(config.health_check, HealthCheckSettings())
        self.assertEqual(config.health_check_nodes, ((0, HealthCheckSettings()),))
        for field, default in FAILOVER_DEFAULTS:
            if field != "logdir":  # Debian moves it to /var/log/postgresql
                self.assertEqual(getattr(config, field), default, field)

    def test_password_not_in_repr(self) -> None:
        """A health check password never shows in a repr, global or per node."""
        config = parse_config(
            TWO_NODES + "health_check_password = 'hunter2'\nhealth_check_password1 = 'swordfish'\n"
        )
        self.assertEqual(config.health_check.password, "hunter2")
        self.assertEqual(config.health_check_for(1).password, "swordfish")
        self.assertNotIn("hunter2", repr(config))
        self.assertNotIn("swordfish", repr(config))


class ValueTests(SynchronousTestCase):
    def test_each_global_setting(self) -> None:
        """Every unnumbered health check name is read into its field with its type."""
        cases = [
            ("health_check_period = 10", "period", 10.0),
            ("health_check_timeout = 0", "timeout", 0.0),
            ("health_check_user = 'pgpool'", "user", "pgpool"),
            ("health_check_password = 'secret'", "password", "secret"),
            ("health_check_database = 'template1'", "database", "template1"),
            ("health_check_max_retries = 3", "max_retries", 3),
            ("health_check_retry_delay = 5", "retry_delay", 5.0),
            ("connect_timeout = 2500", "connect_timeout", 2.5),
        ]
        self.assertEqual(len(cases), len(HEALTH_CHECK_KEYS))
        for text, field, expected in cases:
            config = parse_config(text)
            self.assertEqual(getattr(config.health_check, field), expected, text)
            self.assertEqual(config.warnings, (), text)

    def test_connect_timeout_counts_milliseconds(self) -> None:
        """connect_timeout is in milliseconds unless a unit says otherwise, as in pgpool-II."""
        for text, seconds in [
            ("10000", 10.0),
            ("1", 0.001),
            ("0", 0.0),
            ("'3s'", 3.0),
            ("'250 ms'", 0.25),
            ("'1min'", 60.0),
        ]:
            config = parse_config(f"connect_timeout = {text}\n")
            self.assertEqual(config.health_check.connect_timeout, seconds, text)

    def test_other_times_count_seconds(self) -> None:
        """The other health check and failover times are in seconds unless a unit is given."""
        config = parse_config(
            "health_check_period = 30\nhealth_check_timeout = '1min'\n"
            "health_check_retry_delay = 500ms\nsearch_primary_node_timeout = 5min\n"
            "auto_failback_interval = '1 h'\n"
        )
        settings = config.health_check
        self.assertEqual((settings.period, settings.timeout, settings.retry_delay), (30, 60, 0.5))
        self.assertEqual(config.search_primary_node_timeout, 300.0)
        self.assertEqual(config.auto_failback_interval, 3600.0)

    def test_each_failover_setting(self) -> None:
        """Every failover setting is read into its field; commands are kept as written."""
        config = parse_config(
            "failover_command = '/etc/pgpool-II/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S'\n"
            "failback_command = 'echo %d %%'\nfollow_primary_command = '/bin/follow %d %m'\n"
            "failover_on_backend_error = off\nfailover_on_backend_shutdown = on\n"
            "detach_false_primary = yes\nsearch_primary_node_timeout = 0\n"
            "auto_failback = true\nauto_failback_interval = 0\nlogdir = '/var/log/pgpool'\n"
        )
        self.assertEqual(
            config.failover_command,
            "/etc/pgpool-II/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S",
        )
        self.assertEqual(config.failback_command, "echo %d %%")
        self.assertEqual(config.follow_primary_command, "/bin/follow %d %m")
        self.assertFalse(config.failover_on_backend_error)
        self.assertTrue(config.failover_on_backend_shutdown)
        self.assertTrue(config.detach_false_primary)
        self.assertEqual(config.search_primary_node_timeout, 0.0)
        self.assertTrue(config.auto_failback)
        self.assertEqual(config.auto_failback_interval, 0.0)
        self.assertEqual(config.logdir, "/var/log/pgpool")
        self.assertEqual(config.warnings, ())

    def test_logdir_relative_to_the_config(self) -> None:
        """A relative logdir is taken from pgpool.conf's directory; an absolute one is kept."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "pgpool.conf")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write("logdir = 'state'\n")
            self.assertEqual(load_config(path).logdir, os.path.join(tmp, "state"))
            with open(path, "w", encoding="utf-8") as handle:
                handle.write("logdir = '/var/lib/pgpool'\n")
            self.assertEqual(load_config(path).logdir, "/var/lib/pgpool")

    def test_field_of(self) -> None:
        """A reload knows which Config field each new name sets."""
        self.assertEqual(field_of("health_check_period"), "health_check")
        self.assertEqual(field_of("connect_timeout3"), "health_check_nodes")
        self.assertEqual(field_of("follow_master_command"), "follow_primary_command")
        self.assertEqual(field_of("fail_over_on_backend_error"), "failover_on_backend_error")
        self.assertEqual(field_of("logdir"), "logdir")
        self.assertIsNone(field_of("health_check_test"))


class SynonymTests(SynchronousTestCase):
    def test_old_names(self) -> None:
        """follow_master_command (before 4.2) and fail_over_on_backend_error (before 4.0) set
        the same fields as their new names."""
        config = parse_config(
            "follow_master_command = '/bin/follow %d'\nfail_over_on_backend_error = off\n"
        )
        self.assertEqual(config.follow_primary_command, "/bin/follow %d")
        self.assertFalse(config.failover_on_backend_error)
        self.assertEqual(config.warnings, ())

    def test_both_names_later_wins_with_warning(self) -> None:
        """Setting both spellings keeps the later line and warns once, naming both."""
        config = parse_config(
            "follow_primary_command = '/bin/a'\nfollow_master_command = '/bin/b'\n"
            "fail_over_on_backend_error = off\nfailover_on_backend_error = on\n"
        )
        self.assertEqual(config.follow_primary_command, "/bin/b")
        self.assertTrue(config.failover_on_backend_error)
        self.assertEqual(
            config.warnings,
            (
                "pgpool.conf:2: follow_master_command overrides follow_primary_command set "
                "on line 1; set only one of them",
                "pgpool.conf:4: failover_on_backend_error overrides fail_over_on_backend_error "
                "set on line 3; set only one of them",
            ),
        )


class PerNodeTests(SynchronousTestCase):
    def test_node_value_wins_for_its_node(self) -> None:
        """A numbered value wins for its node; the node keeps the global values for the rest,
        and other nodes keep the global settings."""
        config = parse_config(
            TWO_NODES + "backend_hostname2 = c\nhealth_check_period = 10\n"
            "health_check_user = 'pgpool'\nhealth_check_period1 = 5\nconnect_timeout1 = 500\n"
        )
        common = HealthCheckSettings(period=10.0, user="pgpool")
        node1 = HealthCheckSettings(period=5.0, user="pgpool", connect_timeout=0.5)
        self.assertEqual(config.health_check, common)
        self.assertEqual(config.health_check_nodes, ((1, node1),))
        self.assertEqual(config.health_check_for(0), common)
        self.assertEqual(config.health_check_for(1), node1)
        self.assertEqual(config.health_check_for(2), common)

    def test_line_order_does_not_matter(self) -> None:
        """A numbered value set before its global one still wins, and the global one still
        fills the node's other settings."""
        lines = [
            "health_check_timeout0 = 3",
            "health_check_timeout = 30",
            "health_check_period = 10",
            "health_check_max_retries1 = 2",
        ]
        forward = parse_config(TWO_NODES + "\n".join(lines))
        backward = parse_config(TWO_NODES + "\n".join(reversed(lines)))
        self.assertEqual(forward, backward)
        self.assertEqual(
            forward.health_check_nodes,
            (
                (0, HealthCheckSettings(period=10.0, timeout=3.0)),
                (1, HealthCheckSettings(period=10.0, timeout=30.0, max_retries=2)),
            ),
        )

    def test_every_name_takes_a_node_number(self) -> None:
        """Each of the eight names can be set for one node."""
        text = TWO_NODES + "".join(
            f"{name}1 = {value}\n"
            for name, value in [
                ("health_check_period", "7"),
                ("health_check_timeout", "8"),
                ("health_check_user", "u1"),
                ("health_check_password", "p1"),
                ("health_check_database", "d1"),
                ("health_check_max_retries", "4"),
                ("health_check_retry_delay", "9"),
                ("connect_timeout", "1500"),
            ]
        )
        config = parse_config(text)
        self.assertEqual(
            config.health_check_for(1),
            HealthCheckSettings(7.0, 8.0, "u1", "p1", "d1", 4, 9.0, 1.5),
        )
        self.assertEqual(config.health_check, HealthCheckSettings())
        self.assertEqual(config.warnings, ())

    def test_global_period_zero_node_period_set(self) -> None:
        """A node may be checked while the others are not (health_check_period = 0)."""
        config = parse_config(TWO_NODES + "health_check_period1 = 5\n")
        self.assertEqual(config.health_check_for(0).period, 0.0)
        self.assertEqual(config.health_check_for(1).period, 5.0)

    def test_node_without_hostname_warns_per_line(self) -> None:
        """A numbered value for a node with no backend_hostnameN (or an empty one) is ignored
        with one warning naming its line."""
        config = parse_config(
            TWO_NODES + "health_check_period5 = 5\nbackend_hostname3 = ''\n"
            "connect_timeout3 = 100\nhealth_check_user5 = u\nhealth_check_period1 = 2\n"
        )
        self.assertEqual(
            config.warnings,
            (
                "pgpool.conf:3: health_check_period5 ignored: backend_hostname5 is not set",
                "pgpool.conf:5: connect_timeout3 ignored: backend_hostname3 is not set",
                "pgpool.conf:6: health_check_user5 ignored: backend_hostname5 is not set",
            ),
        )
        self.assertEqual([n for n, _ in config.health_check_nodes], [1])
        self.assertEqual(config.health_check_for(5), HealthCheckSettings())

    def test_leading_zero_is_not_a_node_number(self) -> None:
        """health_check_period01 is an unknown setting (with a hint), not node 1's."""
        config = parse_config(TWO_NODES + "health_check_period01 = 5\n")
        self.assertEqual(config.health_check_nodes, ())
        self.assertEqual(len(config.warnings), 1)
        self.assertIn("unknown setting 'health_check_period01'", config.warnings[0])

    def test_health_check_key(self) -> None:
        """Names split into the unnumbered name and the node number, or None."""
        self.assertEqual(health_check_key("health_check_period"), ("health_check_period", None))
        self.assertEqual(health_check_key("connect_timeout0"), ("connect_timeout", 0))
        self.assertEqual(health_check_key("health_check_user127"), ("health_check_user", 127))
        for name in ("health_check_test", "health_check_period01", "connect_timeouts", "port1"):
            self.assertIsNone(health_check_key(name), name)


class ErrorTests(SynchronousTestCase):
    def assertOneLineError(self, text: str, setting: str) -> str:
        error = self.assertRaises(ConfigError, parse_config, "# c\n" + text, "my.conf")
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(f"my.conf:2: {setting}: "), message)
        return message

    def test_bad_values(self) -> None:
        """Each bad value is one line naming file, line and setting, and what is allowed."""
        cases = [
            ("health_check_period = -1", "health_check_period"),
            ("health_check_period = often", "health_check_period"),
            ("health_check_timeout = 5 min", "health_check_timeout"),
            ("health_check_max_retries = -1", "health_check_max_retries"),
            ("health_check_max_retries = 1.5", "health_check_max_retries"),
            ("health_check_retry_delay = '1 sec'", "health_check_retry_delay"),
            ("connect_timeout = -10", "connect_timeout"),
            ("connect_timeout2 = ten", "connect_timeout2"),
            ("health_check_period1 = nan", "health_check_period1"),
            ("failover_on_backend_error = maybe", "failover_on_backend_error"),
            ("fail_over_on_backend_error = 2", "fail_over_on_backend_error"),
            ("failover_on_backend_shutdown = x", "failover_on_backend_shutdown"),
            ("detach_false_primary = of", "detach_false_primary"),
            ("search_primary_node_timeout = -5", "search_primary_node_timeout"),
            ("auto_failback = sometimes", "auto_failback"),
            ("auto_failback_interval = 1 week", "auto_failback_interval"),
            ("logdir = ''", "logdir"),
        ]
        for text, setting in cases:
            message = self.assertOneLineError(text, setting)
            self.assertIn("expected", message)

    def test_exact_messages(self) -> None:
        """The wording tells the unit a bare number is in."""
        self.assertEqual(
            self.assertOneLineError("connect_timeout = soon", "connect_timeout"),
            "my.conf:2: connect_timeout: invalid value 'soon'; expected a time >= 0 in "
            "milliseconds, or with a unit ms, s, min, h or d (e.g. 10s)",
        )
        self.assertEqual(
            self.assertOneLineError("health_check_period3 = soon", "health_check_period3"),
            "my.conf:2: health_check_period3: invalid value 'soon'; expected a time >= 0 in "
            "seconds, or with a unit ms, s, min, h or d (e.g. 5min)",
        )

    def test_node_number_out_of_range(self) -> None:
        """A node number above 127 is refused as for backend_*N, even with a good value."""
        self.assertEqual(
            self.assertOneLineError("health_check_period128 = 5", "health_check_period128"),
            "my.conf:2: health_check_period128: node number 128 is out of range; expected 0 to 127",
        )
        self.assertOneLineError("connect_timeout1000 = 1", "connect_timeout1000")
        config = parse_config("backend_hostname127 = h\nhealth_check_user127 = u\n")
        self.assertEqual(config.health_check_for(127).user, "u")


class SpellingTests(SynchronousTestCase):
    def test_misspelt_names_suggest_the_new_settings(self) -> None:
        """A typo in a health check or failover name suggests the right one, node kept."""
        config = parse_config("health_check_perod = 5\nconnect_timout1 = 5\nfailover_comand = x\n")
        self.assertEqual(
            config.warnings,
            (
                "pgpool.conf:1: unknown setting 'health_check_perod' ignored; "
                "did you mean 'health_check_period'?",
                "pgpool.conf:2: unknown setting 'connect_timout1' ignored; "
                "did you mean 'connect_timeout1'?",
                "pgpool.conf:3: unknown setting 'failover_comand' ignored; "
                "did you mean 'failover_command'?",
            ),
        )
        self.assertEqual(dataclasses.replace(config, warnings=()), Config())

    def test_health_check_test_still_recognised(self) -> None:
        """pgpool-II's test hook health_check_test loads without a line warning."""
        config = parse_config("health_check_test = on\n")
        self.assertEqual(config.warnings, ())
        self.assertEqual(dict(config.given)["health_check_test"], "on")


class CommandEscapeTests(SynchronousTestCase):
    def test_an_escape_that_cannot_be_quoted_is_a_one_line_error(self) -> None:
        """An escape inside $( ) could run a value as shell: refused at load, naming the
        file, line and setting."""
        for name in ("failover_command", "failback_command", "follow_primary_command"):
            with self.assertRaises(ConfigError) as caught:
                parse_config(f"port = 9999\n{name} = 'echo $(echo %h)'\n", "my.conf")
            message = str(caught.exception)
            self.assertTrue(message.startswith(f"my.conf:2: {name}: %h"), message)
            self.assertNotIn("\n", message)

    def test_unknown_escapes_are_named_once(self) -> None:
        config = parse_config("follow_master_command = '/f.sh %d %x %q'\n")
        self.assertEqual(
            config.warnings,
            (
                "pgpool.conf:1: follow_master_command: %x, %q: not a pgpool-II escape; "
                "dropped, as pgpool-II drops it (%% is a percent sign)",
            ),
        )
        self.assertEqual(config.follow_primary_command, "/f.sh %d %x %q")
