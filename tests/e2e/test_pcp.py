"""twistd pgpool and the real pcp_* programs: -F, a reload that re-reads pcp.conf (and opens
the port once it appears), and pcp_stop_pgpool ending the process."""

from __future__ import annotations

import os
import signal
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.devdb import free_port
from tests.e2e.pooler import PoolerProcess, make_temp_dir
from tests.integration.test_pcp import OTHER_MD5, SECRET_MD5, pcp_program
from tests.support import shared_postgres, skip_unless_postgres


class TwistdPcpTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        pcp_program("pcp_node_count")
        self.pg = shared_postgres()
        self.files = make_temp_dir(self, "pgtw-pcp-e2e-")
        self.pcp_port = free_port()

    def pooler(self, args: list[str]) -> PoolerProcess:
        settings = {"pcp_listen_addresses": "127.0.0.1", "pcp_port": self.pcp_port}
        pooler = PoolerProcess(self, self.pg, settings, args=args)
        with open(pooler.conf_path, "a", encoding="utf-8") as conf:
            conf.write(f"pcp_socket_dir = '{pooler.dir}'\n")
        return pooler

    def write(self, path: str, md5: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"admin:{md5}\n")

    def pcp(
        self, host: str, password: str, name: str, *args: str
    ) -> subprocess.CompletedProcess[str]:
        passfile = os.path.join(self.files, "pcppass")
        with open(passfile, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:admin:{password}\n")
        os.chmod(passfile, 0o600)
        argv = [pcp_program(name), "-h", host, "-p", str(self.pcp_port), "-U", "admin", "-w"]
        env = dict(os.environ, PCPPASSFILE=passfile, HOME=self.files)
        return subprocess.run(
            argv + list(args),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def test_dash_f_reload_and_stop(self) -> None:
        """-F names pcp.conf; the unix socket answers; SIGHUP re-reads the file (the old
        password is refused after it); pcp_stop_pgpool -m fast ends twistd with status 0."""
        named = os.path.join(self.files, "my-pcp.conf")
        self.write(named, SECRET_MD5)
        pooler = self.pooler(["-F", named]).start()
        pooler.wait_for_log("PCP listening on")
        self.assertEqual(self.pcp(pooler.dir, "secret", "pcp_node_count").stdout, "1\n")
        self.write(named, OTHER_MD5)
        assert pooler.proc is not None
        pooler.proc.send_signal(signal.SIGHUP)
        pooler.wait_for_log("configuration reloaded")
        self.assertIn(
            "authentication failed", self.pcp("127.0.0.1", "secret", "pcp_node_count").stderr
        )
        stopped = self.pcp("127.0.0.1", "other", "pcp_stop_pgpool", "-m", "fast")
        self.assertEqual(stopped.stdout, "pcp_stop_pgpool -- Command Successful\n", stopped.stderr)
        self.assertEqual(pooler.wait_exit(30), 0)

    def test_no_pcp_conf_then_one_appears(self) -> None:
        """Without pcp.conf one warning says the port does not listen (a reload does not
        repeat it); once pcp.conf is written beside pgpool.conf, a reload opens it."""
        pooler = self.pooler([]).start()
        pooler.wait_for_log("pcp.conf not found or not readable: the PCP port does not listen")
        refused = self.pcp("127.0.0.1", "secret", "pcp_node_count")
        self.assertNotEqual(refused.returncode, 0)
        assert pooler.proc is not None
        pooler.proc.send_signal(signal.SIGHUP)  # still no pcp.conf: not said again
        pooler.wait_for_log("configuration reloaded")
        self.assertEqual(pooler.log_text().count("the PCP port does not listen"), 1)
        self.write(os.path.join(pooler.dir, "pcp.conf"), SECRET_MD5)
        pooler.proc.send_signal(signal.SIGHUP)
        pooler.wait_for_log("PCP listening on")
        self.assertEqual(self.pcp("127.0.0.1", "secret", "pcp_node_count").stdout, "1\n")
