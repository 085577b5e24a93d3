"""pgpool_tw.config.report: unused pgpool-II settings by feature, and what a reload changes."""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.pgpool2_names import FEATURES, feature_of
from pgpool_tw.config.report import (
    new_warnings,
    plan_reload,
    restart_needed,
    unused_lines,
    unused_settings,
)
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
            "recovery_1st_stage_command = 'recovery_1st_stage'\n"
            "ignore_leading_white_space = off\n"
            "reserved_connections = 1\n"
            "dml_adaptive_object_relationship_list = 't1:t2'\n",
        )
        self.assertEqual(
            unused_lines(config),
            [
                "pgpool.conf: load balancing: ignore_leading_white_space, "
                "dml_adaptive_object_relationship_list not used yet",
                "pgpool.conf: online recovery: recovery_1st_stage_command not used yet",
                "pgpool.conf: process management: reserved_connections not used yet",
            ],
        )

    def test_neutral_values_not_reported(self) -> None:
        """A value at which pgpool-II behaves as pgpool-tw does is not reported, however spelt."""
        config = parse_config(
            "load_balance_mode = false\nuse_watchdog = 0\nrecovery_1st_stage_command = ''\n"
            "recovery_timeout = 1.5min\nreplication_delay_source_timeout = '10 s'\n"
            "health_check_test = false\n"
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

    def test_numbered_names_follow_the_switch(self) -> None:
        """A numbered setting (wd_port1, hostname2) is reported only while its feature's
        switch is on, and keeps its node number in the report."""
        text = "wd_port1 = 9000\nhostname2 = 'h'\n"
        self.assertEqual(unused_settings(parse_config(text)), {})
        config = parse_config(text + "use_watchdog = on\n")
        self.assertEqual(
            unused_settings(config), {"watchdog": ["wd_port1", "hostname2", "use_watchdog"]}
        )

    def test_switch_default_applies_when_unset(self) -> None:
        """A dependent setting counts when pgpool-II's default turns its feature on."""
        config = parse_config("ignore_leading_white_space = off\n")  # load_balance_mode is on
        self.assertEqual(
            unused_settings(config), {"load balancing": ["ignore_leading_white_space"]}
        )
        config = parse_config("wd_priority = 5\n")  # use_watchdog is off
        self.assertEqual(unused_settings(config), {})

    def test_switch_read_by_pgpool_tw_still_silences(self) -> None:
        """A switch pgpool-tw now reads itself (load_balance_mode, sr_check_period) still
        silences the settings of its feature that are not used yet."""
        text = "ignore_leading_white_space = off\nreplication_delay_source_cmd = '/bin/d'\n"
        self.assertEqual(
            sorted(unused_settings(parse_config(text))),
            ["load balancing", "streaming replication check"],
        )
        off = parse_config(text + "load_balance_mode = off\nsr_check_period = 0\n")
        self.assertEqual(unused_settings(off), {})
        quoted = parse_config(text + "load_balance_mode = 'false'\nsr_check_period = '0s'\n")
        self.assertEqual(unused_settings(quoted), {})

    def test_used_settings_not_reported(self) -> None:
        """Settings pgpool-tw reads now (weights, load balancing, replication check, modes)
        are never reported, whatever their value."""
        config = parse_config(
            TWO_NODES + "backend_weight1 = 0.5\nload_balance_mode = on\n"
            "statement_level_load_balance = on\ndisable_load_balance_on_write = always\n"
            "write_function_list = 'nextval'\nprimary_routing_query_pattern_list = 'x'\n"
            "database_redirect_preference_list = 'a:1'\nallow_sql_comments = on\n"
            "sr_check_period = 5\nsr_check_user = u\nsr_check_password = p\n"
            "delay_threshold = 10\ndelay_threshold_by_time = 5\n"
            "prefer_lower_delay_standby = on\nlog_standby_delay = always\n"
            "log_per_node_statement = on\nbackend_clustering_mode = raw\n"
            "health_check_period = 10\nhealth_check_timeout1 = 5\nhealth_check_user = u\n"
            "health_check_password = p\nhealth_check_database = d\nconnect_timeout = 100\n"
            "health_check_max_retries = 3\nhealth_check_retry_delay = 2\n"
            "failover_command = '/bin/f %d'\nfailback_command = '/bin/b %d'\n"
            "follow_master_command = '/bin/m %d'\nfail_over_on_backend_error = off\n"
            "failover_on_backend_shutdown = on\ndetach_false_primary = on\n"
            "search_primary_node_timeout = 10\nauto_failback = on\n"
            "auto_failback_interval = 5\nlogdir = '/var/log/pgpool'\n"
        )
        self.assertEqual(unused_settings(config), {})
        self.assertEqual(unused_lines(config), [])
        old = parse_config("master_slave_mode = on\nmaster_slave_sub_mode = stream\n")
        self.assertEqual(unused_settings(old), {})

    def test_only_names_are_printed(self) -> None:
        """A secret value never appears in a report line."""
        config = parse_config(
            "recovery_password = 'hunter2'\nhealth_check_password = 'hunter2'\n"
            "sr_check_password = 'hunter2'\n"
        )
        lines = unused_lines(config)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("recovery_password", lines[0])
        self.assertNotIn("hunter2", lines[0])

    def test_every_name_in_one_feature(self) -> None:
        """No pgpool-II name is listed in two features."""
        seen: dict[str, str] = {}
        for feature in FEATURES:
            names = list(feature.settings) + ([feature.switch[0]] if feature.switch else [])
            for name in names:
                self.assertNotIn(name.lower(), seen, feature.title)
                seen[name.lower()] = feature.title
        found = feature_of("heartbeat_port3")
        self.assertEqual(found[0].title if found else None, "watchdog")
        # Names pgpool-tw reads are in no feature, numbered or not.
        for name in ("health_check_user3", "connect_timeout", "failover_command", "logdir"):
            self.assertIsNone(feature_of(name), name)

    def test_reload_repeats_only_changed_features(self) -> None:
        """On reload a feature's line comes back only when one of its settings changed."""
        text = "ignore_leading_white_space = off\nreserved_connections = 1\n"
        running = parse_config(text)
        self.assertEqual(unused_lines(parse_config("\n\n" + text), running), [])
        changed = unused_lines(parse_config(text.replace("= 1", "= 2")), running)
        self.assertEqual(len(changed), 1)
        self.assertIn("reserved_connections", changed[0])


class ReloadPlanTests(SynchronousTestCase):
    def test_changed_names_listed(self) -> None:
        """Added, changed and removed settings are named; unchanged ones are not."""
        running = parse_config("max_pool = 4\nlog_connections = on\nnum_init_children = 5\n")
        new = parse_config("max_pool = 5\nnum_init_children = '5'\nload_balance_mode = off\n")
        plan = plan_reload(running, new)
        self.assertEqual(plan.changed, ["log_connections", "max_pool"])
        self.assertEqual(plan.restart, ["load_balance_mode"])
        self.assertTrue(plan.config.load_balance_mode)
        self.assertEqual(plan.config.max_pool, 5)

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

    def test_weight_and_application_name_apply(self) -> None:
        """backend_weightN and backend_application_nameN apply on reload, as in pgpool-II."""
        running = parse_config(TWO_NODES)
        new = parse_config(TWO_NODES + "backend_weight1 = 0.25\nbackend_application_name1 = 'b1'\n")
        self.assertEqual(restart_needed(running, new), [])
        plan = plan_reload(running, new)
        self.assertEqual(plan.restart, [])
        self.assertEqual(plan.changed, ["backend_application_name1", "backend_weight1"])
        self.assertEqual(plan.config.backends[1].weight, 0.25)
        self.assertEqual(plan.config.backends[1].application_name, "b1")

    def test_node_address_data_directory_and_count_need_restart(self) -> None:
        """A node's host, port or data directory, or the set of nodes, needs a restart."""
        running = parse_config(TWO_NODES)
        for text in (
            TWO_NODES.replace("= b", "= c"),
            TWO_NODES + "backend_port1 = 5433\n",
            TWO_NODES + "backend_data_directory1 = '/data'\n",
            TWO_NODES + "backend_hostname2 = c\n",
            "backend_hostname0 = a\n",
        ):
            new = parse_config(text)
            self.assertEqual(restart_needed(running, new), ["backends"], text)
            plan = plan_reload(running, new)
            self.assertEqual(plan.config.backends, running.backends)
            self.assertTrue(plan.restart, text)

    def test_start_only_settings_need_restart(self) -> None:
        """backend_clustering_mode (in either spelling) and load_balance_mode need a restart;
        the other routing and replication-check settings apply on reload."""
        running = parse_config("")
        new = parse_config("backend_clustering_mode = raw\nload_balance_mode = off\n")
        self.assertEqual(restart_needed(running, new), ["clustering_mode", "load_balance_mode"])
        plan = plan_reload(running, new)
        self.assertEqual(plan.restart, ["backend_clustering_mode", "load_balance_mode"])
        self.assertEqual(plan.config.clustering_mode, "streaming_replication")
        old = plan_reload(running, parse_config("master_slave_mode = off\n"))
        self.assertEqual(old.restart, ["master_slave_mode"])
        reloadable = parse_config(
            "statement_level_load_balance = on\ndisable_load_balance_on_write = always\n"
            "write_function_list = 'f'\nprimary_routing_query_pattern_list = 'x'\n"
            "user_redirect_preference_list = 'u:primary'\n"
            "database_redirect_preference_list = 'd:1'\n"
            "app_name_redirect_preference_list = 'a:standby(0.5)'\nallow_sql_comments = on\n"
            "sr_check_period = 1\nsr_check_user = u\nsr_check_password = p\n"
            "sr_check_database = d\ndelay_threshold = 1\ndelay_threshold_by_time = 1\n"
            "prefer_lower_delay_standby = on\nlog_standby_delay = none\n"
            "log_per_node_statement = on\nread_your_writes = off\n"
        )
        self.assertEqual(restart_needed(running, reloadable), [])
        plan = plan_reload(running, reloadable)
        self.assertEqual(plan.restart, [])
        self.assertIs(plan.config, reloadable)
        self.assertEqual(len(plan.changed), 18)

    def test_health_check_and_failover_apply_logdir_needs_restart(self) -> None:
        """Health check and failover settings apply on reload, as in pgpool-II; logdir, which
        pgpool-II reads only at start, keeps its running value."""
        running = parse_config(TWO_NODES)
        new = parse_config(
            TWO_NODES + "health_check_period = 5\nconnect_timeout1 = 500\n"
            "failover_command = '/bin/f %d'\nauto_failback = on\nlogdir = '/var/run/p'\n"
        )
        self.assertEqual(restart_needed(running, new), ["logdir"])
        plan = plan_reload(running, new)
        self.assertEqual(plan.restart, ["logdir"])
        self.assertEqual(
            plan.changed,
            ["auto_failback", "connect_timeout1", "failover_command", "health_check_period"],
        )
        self.assertEqual(plan.config.logdir, "/tmp")
        self.assertEqual(plan.config.health_check.period, 5.0)
        self.assertEqual(plan.config.health_check_for(1).connect_timeout, 0.5)
        self.assertEqual(plan.config.failover_command, "/bin/f %d")

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
        self.assertTrue(1 <= len(lines) <= 12, lines)
        # Health check, failover and PCP are read now: none is reported.
        read = r"health_check_|connect_timeout|fail_?over_|failback|follow_|logdir|pcp_"
        self.assertIsNone(re.search(read, "\n".join(lines)), lines)
        self.assertFalse(any("load balancing" in line for line in lines), lines)
        self.assertTrue(all(line.startswith(f"{path}: ") for line in lines), lines)
