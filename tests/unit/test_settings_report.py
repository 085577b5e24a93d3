"""pgpool_tw.config.report: unused pgpool-II settings by feature, and what a reload changes."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.pgpool2_names import FEATURES, feature_of
from pgpool_tw.config.report import new_warnings, plan_reload, unused_lines, unused_settings
from pgpool_tw.config.settings import load_config, parse_config

#: Debian's stock pgpool.conf (package pgpool2); scripts/test unpacks it when it is missing.
DEBIAN_SAMPLE = os.environ.get(
    "PGPOOL2_SAMPLE", "/usr/share/doc/pgpool2/examples/pgpool.conf.sample"
)

TWO_NODES = "backend_hostname0 = a\nbackend_hostname1 = b\n"


class UnusedTests(SynchronousTestCase):
    def test_grouped_by_feature(self) -> None:
        """Settings pgpool-II would act on are grouped by feature, one line per feature."""
        config = parse_config(
            "failover_command = '/bin/failover %d'\n"
            "load_balance_mode = on\n"
            "pcp_port = 9898\n"
            "statement_level_load_balance = on\n",
        )
        self.assertEqual(
            unused_lines(config),
            [
                "pgpool.conf: load balancing: load_balance_mode, statement_level_load_balance "
                "not used yet",
                "pgpool.conf: failover: failover_command not used yet",
                "pgpool.conf: PCP (pgpool-II's control port): pcp_port not used yet",
            ],
        )

    def test_neutral_values_not_reported(self) -> None:
        """A value at which pgpool-II behaves as pgpool-tw does is not reported, however spelt."""
        config = parse_config(
            "load_balance_mode = false\nhealth_check_period = 0\nfailover_command = ''\n"
            "auto_failback_interval = 1min\nsearch_primary_node_timeout = '5 min'\n"
            "backend_clustering_mode = 'raw'\nmemqcache_total_size = 64MB\n"
        )
        self.assertEqual(unused_settings(config), {})

    def test_switch_off_silences_its_feature(self) -> None:
        """While a feature's switch is neutral its other settings are not reported."""
        config = parse_config("use_watchdog = off\nwd_port0 = 9000\nhostname0 = 'h'\n")
        self.assertEqual(unused_settings(config), {})
        config = parse_config("use_watchdog = on\nwd_port0 = 9000\nhostname0 = 'h'\n")
        self.assertEqual(
            unused_settings(config), {"watchdog": ["use_watchdog", "wd_port0", "hostname0"]}
        )

    def test_node_switch(self) -> None:
        """A node's own health_check_periodN is reported, and turns on its node's settings."""
        config = parse_config(
            "health_check_period1 = 10\nhealth_check_timeout1 = 5\nhealth_check_timeout2 = 5\n"
        )
        self.assertEqual(
            unused_settings(config),
            {"health check": ["health_check_period1", "health_check_timeout1"]},
        )

    def test_switch_default_applies_when_unset(self) -> None:
        """A dependent setting counts when pgpool-II's default turns its feature on."""
        config = parse_config("statement_level_load_balance = on\n")  # load_balance_mode is on
        self.assertEqual(
            unused_settings(config), {"load balancing": ["statement_level_load_balance"]}
        )
        config = parse_config("health_check_timeout = 5\n")  # health_check_period is 0
        self.assertEqual(unused_settings(config), {})

    def test_weights_only_with_two_nodes_and_load_balancing(self) -> None:
        """backend_weightN is reported only when two nodes or more could share reads."""
        one = parse_config("backend_hostname0 = a\nbackend_weight0 = 2\n")
        self.assertEqual(unused_settings(one), {})
        two = parse_config(TWO_NODES + "backend_weight1 = 0.5\n")
        self.assertEqual(unused_settings(two), {"load balancing": ["backend_weight1"]})
        off = parse_config(TWO_NODES + "backend_weight1 = 0.5\nload_balance_mode = off\n")
        self.assertEqual(unused_settings(off), {})

    def test_only_names_are_printed(self) -> None:
        """A secret value never appears in a report line."""
        config = parse_config("sr_check_period = 5\nsr_check_password = 'hunter2'\n")
        line = unused_lines(config)[0]
        self.assertIn("sr_check_password", line)
        self.assertNotIn("hunter2", line)

    def test_every_name_in_one_feature(self) -> None:
        """No pgpool-II name is listed in two features."""
        seen: dict[str, str] = {}
        for feature in FEATURES:
            names = list(feature.settings) + ([feature.switch[0]] if feature.switch else [])
            for name in names:
                self.assertNotIn(name.lower(), seen, feature.title)
                seen[name.lower()] = feature.title
        self.assertEqual(feature_of("health_check_user3")[0].title, "health check")

    def test_reload_repeats_only_changed_features(self) -> None:
        """On reload a feature's line comes back only when one of its settings changed."""
        text = "load_balance_mode = on\npcp_port = 9898\n"
        running = parse_config(text)
        self.assertEqual(unused_lines(parse_config("\n\n" + text), running), [])
        changed = unused_lines(parse_config(text.replace("9898", "9899")), running)
        self.assertEqual(len(changed), 1)
        self.assertIn("pcp_port", changed[0])


class ReloadPlanTests(SynchronousTestCase):
    def test_changed_names_listed(self) -> None:
        """Added, changed and removed settings are named; unchanged ones are not."""
        running = parse_config("max_pool = 4\nlog_connections = on\nnum_init_children = 5\n")
        new = parse_config("max_pool = 5\nnum_init_children = '5'\nload_balance_mode = off\n")
        plan = plan_reload(running, new)
        self.assertEqual(plan.changed, ["load_balance_mode", "log_connections", "max_pool"])
        self.assertEqual(plan.restart, [])
        self.assertIs(plan.config, new)

    def test_restart_settings_keep_running_value(self) -> None:
        """port and node addresses keep their running values; the rest applies."""
        running = parse_config("port = 1\nbackend_hostname0 = a\nmax_pool = 1\n")
        new = parse_config("port = 2\nbackend_hostname0 = b\nmax_pool = 2\n")
        plan = plan_reload(running, new)
        self.assertEqual(plan.restart, ["backend_hostname0", "port"])
        self.assertEqual(plan.changed, ["max_pool"])
        self.assertEqual(plan.config.port, 1)
        self.assertEqual(plan.config.backends, running.backends)
        self.assertEqual(plan.config.max_pool, 2)

    def test_weight_and_flag_apply(self) -> None:
        """A node's weight or flag applies on reload; its address is unchanged."""
        running = parse_config("backend_hostname0 = a\n")
        new = parse_config("backend_hostname0 = a\nbackend_flag0 = DISALLOW_TO_FAILOVER\n")
        plan = plan_reload(running, new)
        self.assertEqual((plan.changed, plan.restart), (["backend_flag0"], []))
        self.assertFalse(plan.config.backends[0].allow_to_failover)

    def test_warnings_not_repeated_when_lines_move(self) -> None:
        """A warning already given is not given again because its line number moved."""
        running = parse_config("bogus = 1\n")
        new = parse_config("\n\nbogus = 1\nother = 2\n")
        self.assertEqual(
            new_warnings(new, running), ["pgpool.conf:4: unknown setting 'other' ignored"]
        )


class DebianFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not os.path.exists(DEBIAN_SAMPLE):
            raise self.skipTest(f"{DEBIAN_SAMPLE} missing (scripts/test installs pgpool2)")

    def test_stock_file_every_default_uncommented(self) -> None:
        """Debian's pgpool.conf, all uncommented, gives no line warning and a few feature lines."""
        with open(DEBIAN_SAMPLE, encoding="utf-8") as handle:
            text = handle.read()
        uncommented = re.sub(r"(?m)^#([a-z_0-9]+\s*=)", r"\1", text)
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(uncommented)
        config = load_config(path)
        self.assertEqual(config.warnings, ())
        lines = unused_lines(config)
        self.assertTrue(3 <= len(lines) <= 12, lines)
        self.assertTrue(any("load_balance_mode" in line for line in lines), lines)
        self.assertTrue(all(line.startswith(f"{path}: ") for line in lines), lines)
