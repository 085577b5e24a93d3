"""Tests for the stats snapshot: waiting clients, wait time and per-pool counters.

The pool and the server connection are the real ones, on ``task.Clock``; the
counts come from real session trackers fed real protocol bytes.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.admin.snapshot import CLIENT_STATES, Snapshot, take_snapshot
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.key import pool_key
from pgpool_tw.pool.pool import Pool
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session.frontend import FrontendFactory

ALICE = StartupMessage((("user", "alice"), ("database", "shop")))
BOB = StartupMessage((("user", "bob"), ("database", "shop")))


class Waiter:
    """A client session as the admission queue sees it: told when it may start."""

    def __init__(self) -> None:
        self.admitted_count = 0

    def admitted(self) -> None:
        self.admitted_count += 1


class SnapshotTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.config = Config(num_init_children=1)
        self.pool = Pool(self.config, self.clock)
        self.factory = FrontendFactory(self.config, self.pool, self.clock)

    def snapshot(self) -> Snapshot:
        return take_snapshot(self.clock.seconds(), self.factory, self.pool)

    def server(self, startup: StartupMessage) -> BackendProtocol:
        return BackendProtocol(
            BackendNode(0, "127.0.0.1", 5432), startup, self.clock, self.factory.servers
        )

    def test_empty_pooler(self) -> None:
        """No connection: every client state is there, at zero, and no pool."""
        snapshot = self.snapshot()
        self.assertEqual(dict(snapshot.clients), dict.fromkeys(CLIENT_STATES, 0))
        self.assertEqual((snapshot.waiting, snapshot.max_wait, dict(snapshot.pools)), (0, 0.0, {}))

    def test_waiting_clients_and_longest_wait(self) -> None:
        """Clients past num_init_children wait; the snapshot counts them and the longest wait."""
        first, second, third = Waiter(), Waiter(), Waiter()
        self.assertTrue(self.pool.admit(first, pool_key(0, ALICE)))
        self.assertFalse(self.pool.admit(second, pool_key(0, ALICE)))
        self.clock.advance(2.0)
        self.assertFalse(self.pool.admit(third, pool_key(0, BOB)))
        self.clock.advance(1.5)
        snapshot = self.snapshot()
        self.assertEqual((snapshot.waiting, snapshot.max_wait), (2, 3.5))
        (alice,) = snapshot.pools_of("alice", "shop")
        (bob,) = snapshot.pools_of("bob", "shop")
        self.assertEqual((alice.waiting, alice.max_wait), (1, 3.5))
        self.assertEqual((bob.waiting, bob.max_wait), (1, 1.5))

    def test_wait_time_counted_when_admitted(self) -> None:
        """A client admitted after waiting adds its wait to its pool's wait_time."""
        first, second = Waiter(), Waiter()
        self.pool.admit(first, pool_key(0, ALICE))
        self.pool.admit(second, pool_key(0, ALICE))
        self.clock.advance(4.0)
        self.pool.withdraw(first)
        self.clock.advance(0)
        self.assertEqual(second.admitted_count, 1)
        (alice,) = self.snapshot().pools_of("alice", "shop")
        self.assertEqual((alice.waiting, alice.wait_time), (0, 4.0))

    def test_session_counts_harvested_at_detach(self) -> None:
        """An attached session's login, queries, transactions and bytes reach its pool once."""
        server = self.server(ALICE)
        tracker = server.attach(self, lambda data: None)
        client = m.query("begin") + m.query("select 1") + m.query("commit")
        answers = b"".join(
            m.message(b"C", tag + b"\0") + m.ready_for_query(status)
            for tag, status in (
                (b"BEGIN", m.IN_TRANSACTION),
                (b"SELECT 1", m.IN_TRANSACTION),
                (b"COMMIT", m.IDLE),
            )
        )
        tracker.feed_client(client)
        tracker.feed_server(answers)
        server.detach()
        server.detach()  # a second detach has nothing left to add
        (alice,) = self.snapshot().pools_of("alice", "shop")
        self.assertEqual(
            (alice.logins, alice.queries, alice.xacts, alice.bytes_in, alice.bytes_out),
            (1, 3, 1, len(client), len(answers)),
        )
        self.assertEqual(self.snapshot().pools_of("bob", "shop"), [])

    def test_resumed_session_is_not_a_second_login(self) -> None:
        """A session carried on with its tracker (from the warm lane) is not counted again."""
        server = self.server(BOB)
        tracker = server.attach(self, lambda data: None)
        server.detach()
        server.attach(self, lambda data: None, tracker)
        server.detach()
        (bob,) = self.snapshot().pools_of("bob", "shop")
        self.assertEqual(bob.logins, 1)
