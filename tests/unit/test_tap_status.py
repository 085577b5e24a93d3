"""twistd pgpool's -D (--discard-status): pgpool_status is read unless it is given."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.cluster import DOWN, WAITING
from pgpool_tw.service import PgpoolService
from pgpool_tw.tap import Options, makeService


class DiscardStatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pgtw-tap-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.conf = os.path.join(self.dir, "pgpool.conf")
        with open(self.conf, "w", encoding="utf-8") as handle:
            handle.write(
                f"backend_hostname0 = 'db0'\nbackend_hostname1 = 'db1'\nlogdir = '{self.dir}'\n"
            )
        with open(os.path.join(self.dir, "pgpool_status"), "w", encoding="utf-8") as handle:
            handle.write("up\ndown\n")

    def service(self, *flags: str) -> PgpoolService:
        options = Options()
        options.parseOptions(["-c", self.conf, *flags])
        service = makeService(options)
        assert isinstance(service, PgpoolService)
        return service

    def test_a_node_down_in_pgpool_status_stays_down(self) -> None:
        service = self.service()
        self.assertEqual([n.status for n in service.factory.cluster], [WAITING, DOWN])

    def test_discard_status_forgets_it_and_rewrites_the_file(self) -> None:
        for flag in ("-D", "--discard-status"):
            with open(os.path.join(self.dir, "pgpool_status"), "w", encoding="utf-8") as f:
                f.write("up\ndown\n")
            service = self.service(flag)
            self.assertEqual([n.status for n in service.factory.cluster], [WAITING, WAITING])
            with open(os.path.join(self.dir, "pgpool_status"), encoding="utf-8") as handle:
                self.assertEqual(handle.read(), "up\nup\n")
