"""``twistd pgpool`` as an operator starts it: help, configuration errors, a port in use."""

from __future__ import annotations

import os
import re
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pooler import TWISTD, PoolerProcess, client_env, make_temp_dir
from tests.support import shared_postgres, skip_unless_postgres

EXIT_TIMEOUT = 15.0


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
