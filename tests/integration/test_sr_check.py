"""checks.sr_check against a real primary and a real streaming replica (shared_cluster)."""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.trial.unittest import TestCase

from pgpool_tw.checks.sr_check import SrCheck
from pgpool_tw.cluster.cluster import Cluster
from pgpool_tw.cluster.topology import (
    MAIN,
    PRIMARY,
    RAW,
    REPLICA,
    STANDBY,
    UNKNOWN,
    Decision,
    Thresholds,
)
from pgpool_tw.config.settings import parse_config
from pgpool_tw_dev.devdb import TempPostgres, free_port
from tests.support import (
    REPLICA_NAME,
    shared_cluster,
    shared_postgres,
    skip_unless_postgres,
    unique_name,
    wait_replica_caught_up,
)

# No test here may leave replay paused: the replica is shared by the whole test process.


def _node(index: int, pg: Optional[TempPostgres], port: int = 0, name: str = "") -> str:
    lines = f"backend_hostname{index} = '127.0.0.1'\n"
    lines += f"backend_port{index} = {pg.port if pg is not None else port}\n"
    if name:
        lines += f"backend_application_name{index} = '{name}'\n"
    return lines


class SrCheckTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        skip_unless_postgres()
        self.primary, self.replica = shared_cluster()

    def _check(self, text: str, **kwargs: Any) -> tuple[SrCheck, Cluster]:
        cluster = Cluster.from_config(parse_config(text))
        kwargs.setdefault("user", "postgres")
        check = SrCheck(reactor, lambda: cluster, period=0, **kwargs)
        self.addCleanup(check.stop)
        return check, cluster

    @inlineCallbacks
    def test_roles_primary_first(self) -> Any:
        """Node 0 the primary, node 1 the replica: roles, pg_status and streaming state."""
        check, cluster = self._check(
            _node(0, self.primary) + _node(1, self.replica, name=REPLICA_NAME)
        )
        decision = yield check.check_now()
        self.assertEqual(decision.primary, 0)
        self.assertEqual([n.role for n in cluster], [PRIMARY, STANDBY])
        self.assertEqual([n.pg_role for n in cluster], [PRIMARY, STANDBY])
        self.assertEqual([n.pg_status for n in cluster], ["up", "up"])
        self.assertEqual(cluster[1].replication_state, "streaming")
        self.assertEqual(cluster[1].replication_sync_state, "async")
        self.assertIsNotNone(cluster[0].current_lsn)
        self.assertIsNotNone(cluster[1].replay_lsn)
        self.assertIsNotNone(cluster[1].delay_seconds)
        self.assertTrue(cluster.checked)

    @inlineCallbacks
    def test_roles_replica_first(self) -> Any:
        """The replica as node 0 and the primary as node 1: the primary is node 1."""
        check, cluster = self._check(_node(0, self.replica) + _node(1, self.primary))
        decision = yield check.check_now()
        self.assertEqual(decision.primary, 1)
        primary = cluster.primary
        assert primary is not None
        self.assertEqual(primary.index, 1)
        self.assertEqual([n.role for n in cluster], [STANDBY, PRIMARY])
        self.assertEqual(cluster.standbys, [cluster[0]])

    @inlineCallbacks
    def test_delay_while_replay_paused(self) -> Any:
        """With replay paused and a write on the primary, the delay in bytes is above 0
        (and over delay_threshold: lagging); after resuming it comes back to 0."""
        check, cluster = self._check(
            _node(0, self.primary) + _node(1, self.replica, name=REPLICA_NAME),
            thresholds=Thresholds(delay_threshold=1),
        )
        wait_replica_caught_up()
        self.replica.psql("SELECT pg_wal_replay_pause();")
        try:
            table = unique_name("t")
            self.primary.psql(
                'CREATE TABLE :"t" AS SELECT g FROM generate_series(1, 1000) g;\n',
                variables={"t": table},
            )
            yield check.check_now()
            delay = cluster[1].delay_bytes
            assert delay is not None
            self.assertGreater(delay, 0)
            self.assertTrue(cluster[1].lagging)
            self.assertFalse(cluster[0].lagging)
        finally:
            self.replica.psql("SELECT pg_wal_replay_resume();")
        wait_replica_caught_up()
        # Nothing else writes to this primary now, but its background processes may: poll.
        for _ in range(200):
            yield check.check_now()
            if cluster[1].delay_bytes == 0:
                break
        self.assertEqual(cluster[1].delay_bytes, 0)
        self.assertFalse(cluster[1].lagging)

    @inlineCallbacks
    def test_node_down(self) -> Any:
        """A node on a port nothing listens on is pg_status down; the others are checked."""
        port = free_port()
        check, cluster = self._check(
            _node(0, self.primary) + _node(1, None, port=port) + _node(2, self.replica)
        )
        yield check.check_now()
        self.assertEqual([n.pg_status for n in cluster], ["up", "down", "up"])
        self.assertEqual(cluster[1].pg_role, UNKNOWN)
        self.assertIsNone(cluster[1].delay_bytes)
        self.assertEqual([n.role for n in cluster], [PRIMARY, STANDBY, STANDBY])

    @inlineCallbacks
    def test_silent_node_times_out(self) -> Any:
        """A node that accepts but never answers counts as down once the round's timeout
        (sr_check_period) passes; the other nodes' answers are kept."""
        factory = ServerFactory()
        factory.protocol = Protocol  # accepts, says nothing
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        silent: int = listening.getHost().port  # type: ignore[attr-defined]
        cluster = Cluster.from_config(
            parse_config(_node(0, self.primary) + _node(1, None, port=silent))
        )
        check = SrCheck(reactor, lambda: cluster, user="postgres", period=0.5)
        self.addCleanup(check.stop)
        yield check.check_now()
        self.assertEqual([n.pg_status for n in cluster], ["up", "down"])
        self.assertIn("no answer within", check._why[1])

    @inlineCallbacks
    def test_read_only_functions(self) -> Any:
        """The primary's non-volatile function names: lower and now in, nextval and random out;
        on_functions hears them once."""
        heard: list[frozenset[str]] = []
        check, _ = self._check(
            _node(0, self.replica) + _node(1, self.primary), on_functions=heard.append
        )
        yield check.check_now()
        names = check.read_only_functions
        self.assertIn("lower", names)
        self.assertIn("now", names)
        self.assertNotIn("nextval", names)
        self.assertNotIn("random", names)
        yield check.check_now()
        self.assertEqual(heard, [names])

    @inlineCallbacks
    def test_raw_mode_main_is_first_up(self) -> Any:
        """Raw mode: the first node that is up is main, whatever it says about recovery."""
        port = free_port()
        check, cluster = self._check(
            _node(0, None, port=port) + _node(1, self.replica) + _node(2, self.primary),
            mode=RAW,
        )
        decision = yield check.check_now()
        self.assertEqual(decision.primary, 1)
        self.assertEqual([n.role for n in cluster], [REPLICA, MAIN, REPLICA])
        self.assertEqual([n.pg_role for n in cluster], [UNKNOWN, STANDBY, PRIMARY])

    @inlineCallbacks
    def test_rounds_never_overlap(self) -> Any:
        """Two check_now() at once run one round after the other, both answered."""
        check, _ = self._check(_node(0, self.primary) + _node(1, self.replica))
        first = check.check_now()
        second = check.check_now()
        self.assertIsNotNone(check._running)
        a: Decision = yield first
        b: Decision = yield second
        self.assertEqual((a.primary, b.primary), (0, 0))
        self.assertIsNone(check._running)

    @inlineCallbacks
    def test_password_from_sr_check_password_and_pool_passwd(self) -> Any:
        """A SCRAM server: sr_check_password logs in; empty, the pool_passwd entry does;
        a wrong one leaves the node down."""
        pg = shared_postgres("scram-sha-256")
        user, password = unique_name("sr"), "s3cret"
        pg.create_role(user, password)
        text = _node(0, pg)
        check, cluster = self._check(text, user=user, password=password)
        yield check.check_now()
        self.assertEqual(cluster[0].pg_status, "up")

        from pgpool_tw.protocol.credentials import PlainSecret

        check, cluster = self._check(
            text, user=user, password="", secrets=lambda: {user: PlainSecret(password)}
        )
        yield check.check_now()
        self.assertEqual(cluster[0].pg_status, "up")

        check, cluster = self._check(text, user=user, password="wrong")
        yield check.check_now()
        self.assertEqual(cluster[0].pg_status, "down")

    @inlineCallbacks
    def test_loop_checks_again(self) -> Any:
        """start() checks at once and again every sr_check_period; stop() ends it."""
        cluster = Cluster.from_config(parse_config(_node(0, self.primary)))
        rounds: list[Decision] = []
        third: Deferred[None] = Deferred()
        check = SrCheck(reactor, lambda: cluster, user="postgres", period=0.05)
        self.addCleanup(check.stop)
        original = check._apply

        def counting(decision: Decision) -> Decision:
            rounds.append(decision)
            if len(rounds) == 3:  # resume the test once this round is over
                reactor.callLater(0, third.callback, None)
            return original(decision)

        check._apply = counting  # type: ignore[method-assign]
        yield check.start()
        self.assertEqual(len(rounds), 1)
        yield third  # two more rounds with no check_now(): the timer's
        self.assertIsNone(check._running)
        self.assertIsNotNone(check._next)
        check.stop()
        self.assertIsNone(check._next)
        self.assertIsNone(check._running)
