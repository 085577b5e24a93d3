"""Tests for pgpool_tw_dev.replica: a real streaming standby made by pg_basebackup -R."""

from __future__ import annotations

import os
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.replica import lsn_to_int, start_replica
from tests.support import (
    REPLICA_NAME,
    shared_cluster,
    skip_unless_postgres,
    unique_name,
    wait_replica_caught_up,
)


def _runs_postmaster_of(pid: Optional[int], data_dir: str) -> bool:
    """Whether ``pid`` is alive and a postmaster of ``data_dir`` (a reaped-late zombie has
    an empty command line)."""
    assert pid is not None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return data_dir.encode() in cmdline.read()
    except FileNotFoundError:
        return False


class LsnTests(SynchronousTestCase):
    def test_lsn_to_int(self) -> None:
        """An X/Y LSN is the high word shifted over the low one."""
        self.assertEqual(lsn_to_int("0/3000148"), 0x3000148)
        self.assertEqual(lsn_to_int("1A/0\n"), 0x1A << 32)


class ReplicaTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.primary, self.replica = shared_cluster()

    def test_replica_is_in_recovery(self) -> None:
        """The replica says it is in recovery; the primary says it is not."""
        self.assertEqual(self.replica.psql("SELECT pg_is_in_recovery();").strip(), "t")
        self.assertEqual(self.primary.psql("SELECT pg_is_in_recovery();").strip(), "f")

    def test_table_created_on_primary_shows_on_replica(self) -> None:
        """A table and row written on the primary are read back on the replica."""
        table = unique_name("t")
        self.primary.psql(
            'CREATE TABLE :"t" (v text); INSERT INTO :"t" VALUES (\'hello\');\n',
            variables={"t": table},
        )
        wait_replica_caught_up()
        got = self.replica.psql('SELECT v FROM :"t";\n', variables={"t": table})
        self.assertEqual(got.strip(), "hello")

    def test_primary_sees_replica_streaming(self) -> None:
        """The primary's pg_stat_replication names the replica, streaming."""
        rows = self.primary.psql("SELECT application_name, state FROM pg_stat_replication;").split()
        self.assertIn(f"{REPLICA_NAME}|streaming", rows)

    def test_replica_refuses_writes(self) -> None:
        """A write on the replica fails: it is a read-only hot standby."""
        with self.assertRaises(RuntimeError) as caught:
            self.replica.psql(f"CREATE TABLE {unique_name('t')} (v int);")
        self.assertIn("read-only", str(caught.exception))


class StopTests(SynchronousTestCase):
    def test_stopping_a_replica_leaves_its_primary_running(self) -> None:
        """stop() ends the standby's own postmaster and dir; the primary keeps answering."""
        skip_unless_postgres()
        primary, _ = shared_cluster()
        extra = start_replica(primary, application_name=unique_name("extra"))
        self.addCleanup(extra.stop)
        pid, temp_dir, data_dir = extra.pid, extra.temp_dir, extra.data_dir
        self.assertEqual(extra.psql("SELECT pg_is_in_recovery();").strip(), "t")
        extra.stop()
        self.assertIsNone(extra.pid)
        self.assertFalse(_runs_postmaster_of(pid, data_dir))
        self.assertFalse(os.path.exists(temp_dir))
        self.assertEqual(primary.psql("SELECT 1;").strip(), "1")
