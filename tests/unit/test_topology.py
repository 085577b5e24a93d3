"""pgpool_tw.cluster.topology: roles, false primaries, delays and lagging from one round."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.checks.rows import RowsReply, parse_data_row
from pgpool_tw.cluster.topology import (
    MAIN,
    PRIMARY,
    RAW,
    REPLICA,
    STANDBY,
    UNKNOWN,
    Probe,
    ReplicationRow,
    Thresholds,
    decide,
    lsn_from_text,
)
from pgpool_tw.config.settings import BackendNode
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.reset_reply import CLEAN, FAILED, MORE


def nodes(count: int, always: int = -1) -> list[BackendNode]:
    return [
        BackendNode(i, f"db{i}", application_name=f"s{i}", always_primary=i == always)
        for i in range(count)
    ]


def primary(lsn: int = 1000, *rows: ReplicationRow) -> Probe:
    return Probe(True, in_recovery=False, current_lsn=lsn, replication=tuple(rows))


def standby(replay: int = 1000) -> Probe:
    return Probe(True, in_recovery=True, replay_lsn=replay)


DOWN = Probe(False)


class LsnTests(SynchronousTestCase):
    def test_lsn_text(self) -> None:
        """X/Y is the high word over the low one; anything else is a ValueError."""
        self.assertEqual(lsn_from_text("0/3000148"), 0x3000148)
        self.assertEqual(lsn_from_text("1/0"), 1 << 32)
        for bad in ("", "3000148", "0/", "/1", "x/1"):
            self.assertRaises(ValueError, lsn_from_text, bad)


class RoleTests(SynchronousTestCase):
    def test_the_node_not_in_recovery_is_primary(self) -> None:
        """Whatever its number, the node that says it is not in recovery is the primary."""
        d = decide(nodes(3), {0: standby(), 1: standby(), 2: primary()})
        self.assertEqual(d.primary, 2)
        self.assertEqual([d.nodes[i].role for i in range(3)], [STANDBY, STANDBY, PRIMARY])
        self.assertEqual([d.nodes[i].pg_role for i in range(3)], [STANDBY, STANDBY, PRIMARY])
        self.assertEqual({d.nodes[i].pg_status for i in range(3)}, {"up"})
        self.assertEqual(d.false_primaries, ())

    def test_no_primary(self) -> None:
        """No node out of recovery: no primary, every node a standby (pgpool-II's words)."""
        d = decide(nodes(2), {0: standby(), 1: DOWN})
        self.assertIsNone(d.primary)
        self.assertEqual([d.nodes[i].role for i in range(2)], [STANDBY, STANDBY])
        self.assertIsNone(d.nodes[0].delay_bytes)

    def test_unreachable_and_missing_probes(self) -> None:
        """A node that did not answer (or has no probe) is down, pg_role unknown."""
        d = decide(nodes(3), {0: primary(), 1: DOWN})
        for i in (1, 2):
            self.assertEqual(d.nodes[i].pg_status, "down")
            self.assertEqual(d.nodes[i].pg_role, UNKNOWN)
            self.assertEqual(d.nodes[i].role, STANDBY)
            self.assertIsNone(d.nodes[i].delay_bytes)

    def test_reachable_without_answer_is_down(self) -> None:
        """Connected but no pg_is_in_recovery() answer counts as down."""
        d = decide(nodes(1), {0: Probe(True)})
        self.assertEqual(d.nodes[0].pg_status, "down")
        self.assertIsNone(d.primary)

    def test_always_primary_is_trusted(self) -> None:
        """ALWAYS_PRIMARY makes a node the primary without asking it, even when down."""
        d = decide(nodes(3, always=1), {0: primary(), 1: DOWN, 2: standby()})
        self.assertEqual(d.primary, 1)
        self.assertEqual(d.nodes[1].role, PRIMARY)
        self.assertEqual(d.nodes[1].pg_status, "down")
        self.assertEqual(d.nodes[0].role, STANDBY)
        self.assertEqual(d.nodes[0].pg_role, PRIMARY)
        # The primary did not answer: no delays can be measured.
        self.assertIsNone(d.nodes[2].delay_bytes)

    def test_two_primaries_no_standby_lowest_wins(self) -> None:
        """Two nodes out of recovery and no standby to tell: the lowest-numbered one; the
        other is a false primary with role unknown."""
        d = decide(nodes(3), {0: DOWN, 1: primary(), 2: primary()})
        self.assertEqual(d.primary, 1)
        self.assertEqual(d.false_primaries, (2,))
        self.assertEqual(d.nodes[2].role, UNKNOWN)
        self.assertEqual(d.nodes[2].pg_role, PRIMARY)
        self.assertFalse(d.nodes[2].lagging)

    def test_two_primaries_the_one_standbys_stream_from_wins(self) -> None:
        """Split brain with standbys: the node whose pg_stat_replication names every standby
        is the true primary, even when it is not the lowest."""
        rows = (ReplicationRow("s2", "streaming", "async"), ReplicationRow("s3", "streaming"))
        probes = {0: primary(5000), 1: primary(900, *rows), 2: standby(), 3: standby()}
        d = decide(nodes(4), probes)
        self.assertEqual(d.primary, 1)
        self.assertEqual(d.false_primaries, (0,))
        self.assertEqual(d.nodes[0].role, UNKNOWN)
        self.assertEqual(d.nodes[2].delay_bytes, 0)  # 900 - 1000, measured on the true one

    def test_two_primaries_partial_streaming_lowest_wins(self) -> None:
        """When no claimant has every standby, the lowest-numbered one is kept."""
        probes = {
            0: primary(1000),
            1: primary(1000, ReplicationRow("s2")),
            2: standby(),
            3: standby(),
        }
        d = decide(nodes(4), probes)
        self.assertEqual(d.primary, 0)
        self.assertEqual(d.false_primaries, (1,))

    def test_raw_mode(self) -> None:
        """Raw mode: the first node that is up is main, the rest replica, no delays."""
        d = decide(nodes(3), {0: DOWN, 1: standby(), 2: primary()}, RAW)
        self.assertEqual(d.primary, 1)
        self.assertEqual([d.nodes[i].role for i in range(3)], [REPLICA, MAIN, REPLICA])
        self.assertEqual(d.nodes[2].pg_role, PRIMARY)
        self.assertIsNone(d.nodes[1].delay_bytes)

    def test_raw_mode_all_down(self) -> None:
        """Raw mode with every node down: no main node."""
        d = decide(nodes(2), {}, RAW)
        self.assertIsNone(d.primary)
        self.assertEqual({n.role for n in d.nodes.values()}, {REPLICA})


class DelayTests(SynchronousTestCase):
    def test_bytes_behind(self) -> None:
        """Delay in bytes: primary's current LSN minus the standby's replay LSN, never < 0."""
        d = decide(nodes(3), {0: primary(5000), 1: standby(4000), 2: standby(6000)})
        self.assertEqual(d.nodes[1].delay_bytes, 1000)
        self.assertEqual(d.nodes[2].delay_bytes, 0)
        self.assertEqual(d.nodes[0].delay_bytes, 0)
        self.assertEqual(d.nodes[0].current_lsn, 5000)
        self.assertEqual(d.nodes[1].replay_lsn, 4000)

    def test_unknown_lsn(self) -> None:
        """A standby that has replayed nothing yet has no delay in bytes."""
        d = decide(nodes(2), {0: primary(5000), 1: Probe(True, in_recovery=True)})
        self.assertIsNone(d.nodes[1].delay_bytes)

    def test_time_and_state_from_the_matching_row(self) -> None:
        """replay_lag, state and sync_state come from the row named
        backend_application_nameN; NULL replay_lag is 0 (pgpool-II); no row: unknown."""
        rows = (
            ReplicationRow("s1", "streaming", "sync", 2.5),
            ReplicationRow("s2", "catchup", "async", None),
            ReplicationRow("other", "streaming", "async", 99.0),
        )
        d = decide(
            nodes(4), {0: primary(10, *rows), 1: standby(10), 2: standby(10), 3: standby(10)}
        )
        self.assertEqual(
            (d.nodes[1].delay_seconds, d.nodes[1].replication_state), (2.5, "streaming")
        )
        self.assertEqual(d.nodes[1].replication_sync_state, "sync")
        self.assertEqual((d.nodes[2].delay_seconds, d.nodes[2].replication_state), (0.0, "catchup"))
        self.assertEqual((d.nodes[3].delay_seconds, d.nodes[3].replication_state), (None, ""))

    def test_empty_application_name_matches_nothing(self) -> None:
        """A node without backend_application_nameN is never matched to a row."""
        backends = [BackendNode(0, "a"), BackendNode(1, "b")]
        d = decide(backends, {0: primary(10, ReplicationRow("", "streaming")), 1: standby(10)})
        self.assertEqual(d.nodes[1].replication_state, "")
        self.assertIsNone(d.nodes[1].delay_seconds)


class LaggingTests(SynchronousTestCase):
    def setUp(self) -> None:
        rows = (ReplicationRow("s1", replay_lag=3.0), ReplicationRow("s2", replay_lag=0.5))
        self.probes = {0: primary(10_000, *rows), 1: standby(9_000), 2: standby(9_990)}

    def lagging(self, thresholds: Thresholds) -> list[bool]:
        d = decide(nodes(3), self.probes, thresholds=thresholds)
        return [d.nodes[i].lagging for i in range(3)]

    def test_off_by_default(self) -> None:
        """No threshold: no node is lagging however far behind."""
        self.assertEqual(self.lagging(Thresholds()), [False, False, False])

    def test_by_bytes(self) -> None:
        """delay_threshold: lagging when the byte delay is over it (not equal)."""
        self.assertEqual(self.lagging(Thresholds(delay_threshold=10)), [False, True, False])
        self.assertEqual(self.lagging(Thresholds(delay_threshold=1000)), [False, False, False])
        self.assertEqual(self.lagging(Thresholds(delay_threshold=9)), [False, True, True])

    def test_by_time_replaces_bytes(self) -> None:
        """delay_threshold_by_time > 0 compares seconds and ignores delay_threshold."""
        both = Thresholds(delay_threshold=1, delay_threshold_by_time=1.0)
        self.assertEqual(self.lagging(both), [False, True, False])
        self.assertEqual(self.lagging(Thresholds(delay_threshold_by_time=0.4)), [False, True, True])
        self.assertEqual(
            self.lagging(Thresholds(delay_threshold_by_time=3.0)), [False, False, False]
        )

    def test_unknown_time_is_not_lagging(self) -> None:
        """A standby with no pg_stat_replication row is not lagging by time."""
        self.probes[0] = primary(10_000)
        self.assertEqual(
            self.lagging(Thresholds(delay_threshold_by_time=0.1)), [False, False, False]
        )


def _row(*values: object) -> bytes:
    body = len(values).to_bytes(2, "big")
    for value in values:
        if value is None:
            body += m.INT32.pack(-1)
        else:
            raw = str(value).encode()
            body += m.INT32.pack(len(raw)) + raw
    return body


class RowsTests(SynchronousTestCase):
    def test_data_row(self) -> None:
        """A DataRow's values as text, NULL as None; a short one is a protocol violation."""
        self.assertEqual(parse_data_row(_row("t", None, "0/1")), ("t", None, "0/1"))
        self.assertEqual(parse_data_row(_row()), ())
        from pgpool_tw.protocol.errors import ProtocolViolation

        for bad in (b"", b"\x00\x01", _row("abc")[:-1]):
            self.assertRaises(ProtocolViolation, parse_data_row, bad)

    def test_rows_reply_one_byte_at_a_time(self) -> None:
        """RowsReply keeps the rows and gives ResetReply's verdict, fed byte by byte."""
        stream = (
            m.message(b"T", b"\x00\x00")
            + m.message(b"D", _row("lower"))
            + m.message(b"D", _row("now"))
            + m.message(b"C", b"SELECT 2\x00")
            + m.ready_for_query(m.IDLE)
        )
        reply = RowsReply({})
        verdicts = [reply.feed(stream[i : i + 1]) for i in range(len(stream))]
        self.assertEqual(verdicts[-1], CLEAN)
        self.assertEqual(set(verdicts[:-1]), {MORE})
        self.assertEqual(reply.rows, [("lower",), ("now",)])

    def test_rows_reply_error(self) -> None:
        """An ErrorResponse makes the verdict FAILED; a malformed DataRow too."""
        reply = RowsReply({})
        error = m.error_response("42883", "no such function")
        self.assertEqual(reply.feed(error + m.ready_for_query(m.IDLE)), FAILED)
        broken = RowsReply({})
        self.assertEqual(broken.feed(m.message(b"D", b"\x00\x05")), FAILED)
