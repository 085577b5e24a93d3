"""twistd pgpool's -F (--pcp-file): pcp.conf named on the command line, else beside
pgpool.conf; a named file that cannot be read stops the start with one line."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.service import PgpoolService
from pgpool_tw.tap import Options, makeService

MD5 = "5ebe2294ecd0e0f08eab7690d2a6ee69"


class PcpFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pgtw-tap-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.conf = os.path.join(self.dir, "pgpool.conf")
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(f"backend_hostname0 = 'db0'\nlogdir = '{self.dir}'\n")

    def write(self, name: str, user: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"{user}:{MD5}\n")
        return path

    def service(self, *flags: str) -> PgpoolService:
        options = Options()
        options.parseOptions(["-c", self.conf, *flags])
        service = makeService(options)
        assert isinstance(service, PgpoolService)
        return service

    def test_beside_pgpool_conf_by_default(self) -> None:
        self.write("pcp.conf", "beside")
        users = self.service().pcp_users
        self.assertEqual(list(users.users) if users else None, ["beside"])

    def test_dash_f_names_another_file(self) -> None:
        self.write("pcp.conf", "beside")
        other = self.write("other.conf", "named")
        for flag in ("-F", "--pcp-file"):
            users = self.service(flag, other).pcp_users
            self.assertEqual(list(users.users) if users else None, ["named"])

    def test_dash_f_missing_file_refuses_to_start(self) -> None:
        missing = os.path.join(self.dir, "nope.conf")
        with self.assertRaises(SystemExit) as caught:
            self.service("-F", missing)
        self.assertEqual(str(caught.exception), f"{missing}: cannot read pcp.conf (-F)")

    def test_no_pcp_conf_no_port(self) -> None:
        """Without pcp.conf the service starts and PCP stays closed (one warning)."""
        service = self.service()
        self.assertIsNone(service.pcp_users)
        self.assertIsNone(service.pcp_port)
