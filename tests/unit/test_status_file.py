"""checks/status_file.py: pgpool_status, read and written as pgpool-II does."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.checks.status_file import read_status, status_path, write_status


class StatusFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pgtw-status-")
        self.path = status_path(self.dir)
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_round_trip_line_n_is_node_n(self) -> None:
        """Line N is node N; a gap is 'unused'; waiting and up are both 'up'."""
        self.assertIsNone(write_status(self.path, {0: "up", 2: "down", 3: "waiting"}))
        with open(self.path, encoding="utf-8") as handle:
            self.assertEqual(handle.read(), "up\nunused\ndown\nup\n")
        self.assertEqual(read_status(self.path, [0, 2, 3]), ({2}, None))

    def test_missing_file_is_every_node_up(self) -> None:
        self.assertEqual(read_status(self.path, [0, 1]), (set(), None))

    def test_every_node_down_is_ignored_with_a_warning(self) -> None:
        write_status(self.path, {0: "down", 1: "down"})
        down, warning = read_status(self.path, [0, 1])
        self.assertEqual(down, set())
        assert warning is not None
        self.assertIn("every node is down", warning)

    def test_garbage_is_ignored_with_a_warning(self) -> None:
        with open(self.path, "w", encoding="utf-8") as handle:
            handle.write("up\nsideways\n")
        down, warning = read_status(self.path, [0, 1])
        self.assertEqual(down, set())
        assert warning is not None
        self.assertIn("'sideways'", warning)

    def test_unwritable_directory_says_why(self) -> None:
        why = write_status(os.path.join(self.dir, "missing", "pgpool_status"), {0: "up"})
        assert why is not None
        self.assertIn("cannot write", why)
