"""``twistd pgpool`` as an operator starts it: help, version, configuration errors and warnings,
a pgpool-II user's stock pgpool.conf, reload messages, a port in use."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

import pgpool_tw
from tests.e2e.pooler import TWISTD, PoolerProcess, client_env, make_temp_dir
from tests.support import shared_postgres, skip_unless_postgres

EXIT_TIMEOUT = 15.0
#: Debian's stock pgpool.conf (package pgpool2); scripts/test unpacks it when it is missing.
DEBIAN_SAMPLE = os.environ.get(
    "PGPOOL2_SAMPLE", "/usr/share/doc/pgpool2/examples/pgpool.conf.sample"
)


def run_twistd(testcase: SynchronousTestCase, *args: str) -> subprocess.CompletedProcess[str]:
    """``twistd <args>`` in a private directory, stdout and stderr together in ``stdout``."""
    cwd = make_temp_dir(testcase, "pgpool-tw-e2e-cli-")
    return subprocess.run(
        [TWISTD, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=client_env(),
        timeout=60,
    )


class HelpTests(SynchronousTestCase):
    def test_help_lists_config(self) -> None:
        """`twistd pgpool --help` run outside the checkout exits 0 and documents --config."""
        cwd = make_temp_dir(self, "pgpool-tw-e2e-help-")
        proc = subprocess.run(
            [TWISTD, "pgpool", "--help"],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=60,
        )
        output = proc.stdout + proc.stderr
        self.assertEqual(proc.returncode, 0, output)
        self.assertRegex(output, r"(?m)^\s*-c, --config=")


class VersionTests(SynchronousTestCase):
    def test_version_names_pgpool_tw(self) -> None:
        """`twistd pgpool --version` prints pgpool-tw's version, then Twisted's, and exits 0."""
        proc = run_twistd(self, "pgpool", "--version")
        self.assertEqual(proc.returncode, 0, proc.stdout)
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[0], f"pgpool-tw {pgpool_tw.__version__}", proc.stdout)
        self.assertRegex(lines[1], r"^Twisted \d+\.\d+")
        self.assertEqual(len(lines), 2, proc.stdout)


class BadFileTests(SynchronousTestCase):
    """A file twistd must refuse, run as `twistd -n pgpool -c bad.conf`: no server needed."""

    def refuse(self, *lines: str) -> str:
        directory = make_temp_dir(self, "pgpool-tw-e2e-bad-")
        path = os.path.join(directory, "bad.conf")
        # Nothing to listen on, should the file ever be accepted.
        head = ["listen_addresses = ''", f"socket_dir = '{directory}'", "port = 0"]
        with open(path, "w", encoding="utf-8") as conf:
            conf.write("\n".join(head + list(lines)) + "\n")
        proc = run_twistd(self, "-n", "pgpool", "-c", path)
        self.assertEqual(proc.returncode, 1, proc.stdout)
        self.assertEqual(len(proc.stdout.splitlines()), 1, proc.stdout)
        self.assertNotIn("Usage", proc.stdout)
        return proc.stdout.strip()

    def test_bad_value_is_one_line_and_status_1(self) -> None:
        """A bad value prints file:line: setting: what is allowed, no usage text, status 1."""
        line = self.refuse("backend_hostname0 = 'db'", "max_pool = lots")
        self.assertRegex(
            line,
            r"^/\S+/bad\.conf:5: max_pool: invalid value 'lots'; expected an integer from 1",
        )

    def test_bad_flag_is_one_line(self) -> None:
        """A bad backend_flagN is the same one line, naming pgpool-II's words."""
        line = self.refuse("backend_hostname0 = 'db'", "backend_flag0 = 'ALLOW_TO_FAILOVER|X'")
        self.assertIn("bad.conf:5: backend_flag0: invalid value", line)
        self.assertIn("ALWAYS_PRIMARY", line)

    def test_no_backend_is_one_line(self) -> None:
        """A file without backend_hostname0 is refused in one line, without usage text."""
        line = self.refuse("num_init_children = 4")
        self.assertTrue(line.endswith("no backend configured; set backend_hostname0"), line)


class ConfigErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()

    def test_bad_value_exits_naming_file_line_and_setting(self) -> None:
        """num_init_children = abc ends twistd non-zero with pgpool.conf:<line> and the name."""
        pooler = PoolerProcess(self, self.pg, raw_lines=["num_init_children = abc"])
        line = pooler.line_of("num_init_children")
        pooler.launch()
        status = pooler.wait_exit(EXIT_TIMEOUT)
        output = pooler.log_text()
        self.assertNotEqual(status, 0, output)
        wanted = f"pgpool.conf:{line}"
        matching = [
            text for text in output.splitlines() if wanted in text and "num_init_children" in text
        ]
        self.assertTrue(matching, f"no line with {wanted!r} and num_init_children in:\n{output}")
        self.assertNotIn("Traceback", output)

    def test_unknown_setting_warns_and_starts(self) -> None:
        """An unknown setting is ignored with a warning naming pgpool.conf:<line>."""
        pooler = PoolerProcess(self, self.pg, raw_lines=["no_such_setting = 1"])
        line = pooler.line_of("no_such_setting")
        pooler.start()
        output = pooler.log_text()
        wanted = f"pgpool.conf:{line}"
        matching = [
            text for text in output.splitlines() if wanted in text and "no_such_setting" in text
        ]
        self.assertTrue(matching, f"no line with {wanted!r} and no_such_setting in:\n{output}")
        self.assertTrue(pooler.alive())

    def test_misspelt_setting_names_nearest(self) -> None:
        """A misspelt name gets one line naming the nearest known name; the pooler starts."""
        pooler = PoolerProcess(self, self.pg, raw_lines=["max_pol = 3"]).start()
        line = pooler.wait_for_log("max_pol")
        self.assertIn(f"pgpool.conf:{pooler.line_of('max_pol')}: unknown setting 'max_pol'", line)
        self.assertIn("did you mean 'max_pool'?", line)


def uncommented(path: str) -> list[str]:
    """A pgpool-II sample with every commented-out setting turned on, as a new user does."""
    with open(path, encoding="utf-8") as sample:
        text = sample.read()
    return re.sub(r"(?m)^#([a-z_0-9]+\s*=)", r"\1", text).split("\n")


class FirstMinuteTests(SynchronousTestCase):
    """A pgpool-II user's first minute: Debian's stock file, then a reload."""

    def setUp(self) -> None:
        skip_unless_postgres()
        if not os.path.exists(DEBIAN_SAMPLE):
            raise self.skipTest(f"{DEBIAN_SAMPLE} missing; scripts/test unpacks pgpool2's")
        self.pg = shared_postgres()

    def pooler_on(self, lines: list[str]) -> PoolerProcess:
        """A pooler whose file is ``lines`` followed by its own settings (which win)."""
        pooler = PoolerProcess(self, self.pg)
        pooler.lines = lines + pooler.lines
        with open(pooler.conf_path, "w", encoding="utf-8") as conf:
            conf.write("\n".join(pooler.lines) + "\n")
        return pooler.start()

    def test_stock_file_reports_a_handful_of_lines(self) -> None:
        """Debian's file, all uncommented, starts with a few feature lines and no line warning."""
        pooler = self.pooler_on(uncommented(DEBIAN_SAMPLE))
        pooler.wait_for_log("pgpool-tw listening on")
        output = pooler.log_text()
        self.assertNotIn("unknown setting", output)
        features = [line for line in output.splitlines() if " not used yet" in line]
        self.assertTrue(1 <= len(features) <= 12, output)
        self.assertNotIn("pcp_", "\n".join(features))  # PCP is read now
        # Load balancing is used now: its settings are not reported (pgpool-II's stock
        # values are what pgpool-tw does).
        self.assertEqual([f for f in features if ": load balancing: " in f], [], output)
        nodes = [line for line in output.splitlines() if "backend nodes 0 (" in line]
        self.assertEqual(len(nodes), 1, output)
        self.assertIn("streaming replication over backend nodes 0", nodes[0])
        self.assertIn("1 (host2:5433)", nodes[0])
        self.assertIn("reads are load balanced", nodes[0])
        self.assertNotIn("Traceback", output)

    def test_reload_names_changes_and_repeats_nothing(self) -> None:
        """A SIGHUP names the changed settings once and repeats no earlier warning."""
        pooler = self.pooler_on(["use_watchdog = on", "max_pol = 3", "max_pool = 2"])
        pooler.wait_for_log("watchdog: use_watchdog not used yet")
        mark = len(pooler.log_text())
        pooler.lines.append("max_pool = 3")
        pooler.lines.append("sr_check_password = 'hunter2'")
        with open(pooler.conf_path, "w", encoding="utf-8") as conf:
            conf.write("\n".join(pooler.lines) + "\n")
        assert pooler.proc is not None
        pooler.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in pooler.log_text()[mark:]:
            self.assertLess(time.monotonic(), deadline, pooler.log_tail())
            time.sleep(0.05)
        after = pooler.log_text()[mark:]
        self.assertIn("reload: changed: max_pool, sr_check_password", after)
        self.assertNotIn("hunter2", after)
        self.assertNotIn("use_watchdog", after)
        self.assertNotIn("max_pol", after)


class PortInUseTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()

    def test_second_instance_on_same_port_exits_naming_address(self) -> None:
        """A second twistd on a port in use exits non-zero with one `cannot listen on` line."""
        first = PoolerProcess(self, self.pg).start()
        second = PoolerProcess(self, self.pg, port=first.port).launch()
        status = second.wait_exit(EXIT_TIMEOUT)
        output = second.log_text()
        self.assertNotEqual(status, 0, output)
        pattern = re.compile(rf"cannot listen on 127\.0\.0\.1:{first.port}\b")
        lines = [text for text in output.splitlines() if "cannot listen" in text]
        self.assertEqual(len(lines), 1, output)
        self.assertRegex(lines[0], pattern)
        self.assertNotIn("Traceback", output)
        # The instance that owns the port is untouched.
        self.assertTrue(first.alive())
        self.assertTrue(first.accepts())


class StartupLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()

    def test_startup_log_names_listeners(self) -> None:
        """The `listening on` log line names 127.0.0.1:<port> and the socket path as text."""
        pooler = PoolerProcess(self, self.pg).start()
        line = pooler.wait_for_log("pgpool-tw listening on")
        path = os.path.join(pooler.socket_dir, f".s.PGSQL.{pooler.port}")
        self.assertTrue(line.endswith(f"listening on 127.0.0.1:{pooler.port}, {path}"), line)
