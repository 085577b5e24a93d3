"""checks/failover.py's rules with no server: which requests detach, attach or are refused,
one at a time, and what sessions are told (a recording NodeEffects)."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.checks.failover import Failover
from pgpool_tw.cluster.cluster import DOWN, PRIMARY, STANDBY, WAITING, Cluster
from pgpool_tw.cluster.topology import Decision, NodeState, Probe, ReplicationRow
from pgpool_tw.config.settings import Config, parse_config

THREE = "".join(
    f"backend_hostname{i} = 'db{i}'\nbackend_application_name{i} = 'n{i}'\n" for i in range(3)
)


class Effects:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def node_detached(self, index: int, why: str) -> None:
        self.calls.append(("detached", index))

    def roles_changed(self, changed: frozenset[int]) -> None:
        self.calls.append(("roles", sorted(changed)))

    def routing_changed(self) -> None:
        self.calls.append(("routing",))


class FailoverRuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.make(THREE)

    def make(self, text: str, **settings: Any) -> None:
        self.config: Config = dataclasses.replace(parse_config(text), **settings)
        self.cluster = Cluster.from_config(self.config)
        self.cluster.set_primary(0)
        self.effects = Effects()
        self.reactor = MemoryReactorClock()
        self.failover = Failover(
            self.reactor, lambda: self.config, lambda: self.cluster, self.effects, lambda: None
        )

    def result(self, deferred: Any) -> Any:
        return self.successResultOf(deferred)

    def test_detaching_a_standby_tells_sessions_and_keeps_the_primary(self) -> None:
        self.assertTrue(self.result(self.failover.detach(2, "by request")))
        self.assertEqual(self.cluster[2].status, DOWN)
        self.assertEqual(self.effects.calls, [("detached", 2), ("routing",)])
        self.assertFalse(self.result(self.failover.detach(2, "again")))  # already down

    def test_disallow_to_failover_is_never_detached(self) -> None:
        self.make(THREE + "backend_flag1 = 'DISALLOW_TO_FAILOVER'\n")
        self.assertFalse(self.result(self.failover.detach(1, "by request")))
        self.assertNotEqual(self.cluster[1].status, DOWN)
        self.assertEqual(self.effects.calls, [])

    def test_the_last_node_up_is_detached_only_on_request(self) -> None:
        for index in (1, 2):
            self.result(self.failover.detach(index, "by request"))
        self.assertFalse(self.result(self.failover.detach(0, "health check", automatic=True)))
        self.assertNotEqual(self.cluster[0].status, DOWN)
        self.assertTrue(self.result(self.failover.detach(0, "by request")))
        self.assertIsNone(self.cluster.primary)

    def test_a_detached_primary_without_a_check_leaves_writes_to_the_main_node(self) -> None:
        """No replication check to search with: the main node takes the writes."""
        self.assertTrue(self.result(self.failover.detach(0, "by request")))
        self.assertEqual((self.cluster[0].status, self.cluster[0].role), (DOWN, STANDBY))
        primary = self.cluster.primary
        assert primary is not None
        self.assertEqual(primary.index, 1)
        self.assertIn(("roles", [0]), self.effects.calls)

    def test_attach_waits_and_requests_queue(self) -> None:
        first = self.failover.detach(1, "by request")
        second = self.failover.attach(1)
        self.assertTrue(self.result(first))
        self.assertTrue(self.result(second))
        self.assertEqual(self.cluster[1].status, WAITING)
        self.assertFalse(self.result(self.failover.attach(1)))  # not down

    def test_promote_without_switchover_names_the_primary(self) -> None:
        self.assertTrue(self.result(self.failover.promote(2)))
        self.assertEqual([n.role for n in self.cluster], [STANDBY, STANDBY, PRIMARY])
        self.assertIn(("roles", [0, 2]), self.effects.calls)
        self.assertFalse(self.result(self.failover.promote(2)))  # it already is

    def _round(
        self, primary: int, streaming: tuple[str, ...] = (), false: tuple[int, ...] = ()
    ) -> None:
        rows = tuple(ReplicationRow(name, "streaming") for name in streaming)
        probes = {primary: Probe(True, in_recovery=False, replication=rows)}
        nodes = {primary: NodeState(PRIMARY, PRIMARY, "up")}
        self.failover.on_round(Decision(nodes, primary, false), probes)

    def test_detach_false_primary_only_when_asked(self) -> None:
        self._round(0, false=(2,))
        self.assertNotEqual(self.cluster[2].status, DOWN)
        self.config = dataclasses.replace(self.config, detach_false_primary=True)
        self._round(0, false=(2,))
        self.assertEqual(self.cluster[2].status, DOWN)

    def test_auto_failback_of_a_standby_that_streams_once_per_interval(self) -> None:
        self.config = dataclasses.replace(
            self.config, auto_failback=True, auto_failback_interval=60
        )
        self.result(self.failover.detach(1, "by request"))
        self._round(0, streaming=("n2",))
        self.assertEqual(self.cluster[1].status, DOWN)  # n1 does not stream
        self._round(0, streaming=("n1",))
        self.assertEqual(self.cluster[1].status, WAITING)
        self.result(self.failover.detach(1, "by request"))
        self._round(0, streaming=("n1",))
        self.assertEqual(self.cluster[1].status, DOWN)  # within auto_failback_interval
        self.reactor.advance(60)
        self._round(0, streaming=("n1",))
        self.assertEqual(self.cluster[1].status, WAITING)
