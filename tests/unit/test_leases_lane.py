"""Transaction pooling's servers with a C lane (pool/leases.py's side of engine/_txlane.c).

The lane here is a Python stand-in with the C lane's rules as far as ``Leases`` sees
them (park, lend to its first waiter or to Python's first, take, expire, kick); the C
lane itself is tested against the stream in test_txlane.py.  Servers are the real ones
of test_leases.py over a StringTransport.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.engine import fastpoll
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.leases import EV_TX_RETIRED, EV_TX_RETURN, LeaseStats
from tests.unit.test_leases import A, Client, Rig, closed


class FakeTx:
    def __init__(self, backend: BackendProtocol, tag: int) -> None:
        self.backend = backend
        self.tag = tag
        self.busy = False
        self.retired = False

    def retire(self) -> None:
        self.retired = True


class LaneClient:
    """A client waiting on the lane: ``owner`` is what expiry calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.expired = 0

    def owner(self) -> None:
        self.expired += 1


class FakeLane:
    def __init__(self, on_event: Callable[[int, Any], None]) -> None:
        self.on_event = on_event
        self.parked: list[FakeTx] = []
        self.queue: list[tuple[int, LaneClient]] = []
        self.running: dict[str, FakeTx] = {}
        self.seq = 0
        self.py_first = 0
        self.room = False
        self.kicked: list[str] = []
        self.age = 0.0

    # what Leases reads
    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def idle_count(self) -> int:
        return len(self.parked)

    @property
    def max_wait(self) -> float:
        return self.age if self.queue else 0.0

    def arrive(self) -> int:
        self.seq += 1
        return self.seq

    def give(self, tx: FakeTx) -> None:
        if tx.retired:
            self.on_event(EV_TX_RETIRED, tx)
            return
        if self.py_first and (not self.queue or self.py_first < self.queue[0][0]):
            self.on_event(EV_TX_RETURN, tx)
            return
        if self.queue:
            _, client = self.queue.pop(0)
            self.running[client.name] = tx
            tx.busy = True
            return
        tx.busy = False
        self.parked.append(tx)

    def take(self) -> Optional[FakeTx]:
        return self.parked.pop() if self.parked else None

    def remove(self, tx: FakeTx) -> bool:
        if tx in self.parked:
            self.parked.remove(tx)
            return True
        return False

    def idle(self) -> list[tuple[FakeTx, float]]:
        return [(tx, self.age) for tx in self.parked]

    def expire(self, seconds: float) -> list[LaneClient]:
        if self.age < seconds:
            return []
        out = [client for _, client in self.queue]
        self.queue = []
        return out

    def kick(self) -> bool:
        if not self.queue:
            return False
        self.kicked.append(self.queue.pop(0)[1].name)
        return True

    def take_counts(self) -> tuple[int, int, int, int]:
        return (3, 2, 10, 20)

    def take_waited(self) -> float:
        return 0.25

    def take_waits(self) -> tuple[float, tuple[int, ...]]:
        return 0.0, (0,) * 18 + (1,) + (0,) * 13  # one wait of 0.25 s: bucket 18

    # what the C loop would do
    def wait(self, name: str) -> LaneClient:
        client = LaneClient(name)
        self.queue.append((self.arrive(), client))
        return client

    def run(self, name: str) -> FakeTx:
        """A lane client's transaction starts on the most recently parked server."""
        tx = self.parked.pop()
        self.running[name] = tx
        tx.busy = True
        return tx

    def finish(self, name: str) -> None:
        self.give(self.running.pop(name))


class LaneLeaseTests(SynchronousTestCase):
    def rig(self, **settings: Any) -> tuple[Rig, FakeLane]:
        rig = Rig(**settings)
        lanes: list[FakeLane] = []

        def make(on_event: Callable[[int, Any], None]) -> FakeLane:
            lanes.append(FakeLane(on_event))
            return lanes[-1]

        rig.leases.make_lane = make  # type: ignore[assignment]
        self.patch(fastpoll, "tx_server", FakeTx)
        self.assertIsNotNone(rig.leases.lane(A))
        return rig, lanes[0]

    def test_a_released_server_parks_on_the_lane(self) -> None:
        rig, lane = self.rig()
        server = rig.member()
        self.assertEqual([tx.backend for tx in lane.parked], [server])
        self.assertIs(server.keeper, rig.leases)
        self.assertTrue(rig.leases.is_member(server))
        self.assertEqual(rig.stats(), LeaseStats(0, 1, 0, 0, 0.0))
        self.assertTrue(lane.room)  # a place is free: a lane client may ask Python

    def test_a_python_lease_takes_the_lanes_most_recent(self) -> None:
        rig, lane = self.rig()
        first, second = rig.members(A, False, False)
        client = Client(rig).lease()
        self.assertEqual(client.given, [second])
        self.assertEqual([tx.backend for tx in lane.parked], [first])
        self.assertEqual(rig.stats(), LeaseStats(1, 1, 0, 0, 0.0))

    def test_a_server_that_asked_a_password_stays_off_the_lane(self) -> None:
        rig, lane = self.rig()
        rig.member(password=True)
        self.assertEqual(lane.parked, [])
        self.assertEqual(rig.stats().idle, 1)
        self.assertTrue(lane.room)  # Python has one parked: lane clients ask Python

    def test_pythons_earlier_waiter_gets_the_freed_server(self) -> None:
        """One server, busy on the lane; a Python client waits, then a lane client: the
        freed server goes to Python first, then the lane's waiter gets it."""
        rig, lane = self.rig(default_pool_size=1)
        server = rig.member()
        lane.run("x")
        self.assertFalse(lane.room)
        client = Client(rig).lease()
        self.assertIsNotNone(client.ticket)
        self.assertEqual(lane.py_first, client.ticket.seq)  # type: ignore[union-attr]
        lane.wait("y")
        lane.finish("x")
        self.assertEqual(client.given, [server])
        self.assertEqual(lane.py_first, 0)
        rig.leases.release(server, True)  # Python's transaction ended
        self.assertIs(lane.running["y"].backend, server)

    def test_the_lanes_earlier_waiter_gets_the_freed_server(self) -> None:
        rig, lane = self.rig(default_pool_size=1)
        server = rig.member()
        lane.run("x")
        lane.wait("y")
        client = Client(rig).lease()
        lane.finish("x")
        self.assertIs(lane.running["y"].backend, server)
        self.assertEqual(client.given, [])
        lane.finish("y")
        self.assertEqual(client.given, [server])

    def test_query_wait_timeout_expires_lane_waiters(self) -> None:
        rig, lane = self.rig(default_pool_size=1, query_wait_timeout=5)
        rig.member()
        lane.run("x")
        waiter = lane.wait("y")
        lane.age = 4.0
        rig.leases.tick()
        self.assertEqual(waiter.expired, 0)
        lane.age = 5.0
        rig.leases.tick()
        self.assertEqual(waiter.expired, 1)
        self.assertEqual(lane.waiting, 0)

    def test_server_idle_timeout_closes_lane_servers_above_min_pool_size(self) -> None:
        rig, lane = self.rig(server_idle_timeout=60, min_pool_size=1)
        first, second = rig.members(A, False, False)
        lane.age = 61.0
        rig.leases.tick()
        self.assertTrue(closed(first))  # the least recently parked
        self.assertFalse(closed(second))
        self.assertEqual([tx.backend for tx in lane.parked], [second])
        self.assertFalse(rig.leases.is_member(first))

    def test_freed_places_send_lane_waiters_to_python(self) -> None:
        """A server of a full key closes while lane clients wait: the first of them asks
        Python, which opens a server in the freed place."""
        rig, lane = self.rig(default_pool_size=1)
        server = rig.member()
        lane.run("x")
        lane.wait("y")
        lane.wait("z")
        rig.leases.forget(server)
        lane.running.clear()
        self.assertEqual(lane.kicked, ["y"])
        self.assertTrue(lane.room)

    def test_reserve_opens_a_server_for_a_lane_waiter(self) -> None:
        rig, lane = self.rig(default_pool_size=1, reserve_pool_size=1, reserve_pool_timeout=2)
        rig.member()
        lane.run("x")
        lane.wait("y")
        lane.age = 1.0
        rig.leases.tick()
        self.assertEqual(rig.opened_for, [])
        lane.age = 2.0
        rig.leases.tick()
        self.assertEqual(rig.opened_for, [A])
        rig.leases.tick()
        self.assertEqual(rig.opened_for, [A])  # one at a time

    def test_a_fast_shutdown_closes_what_the_lane_parks_or_frees(self) -> None:
        rig, lane = self.rig()
        first, second = rig.members(A, False, False)
        lane.run("x")  # second, busy on the lane
        rig.leases.close_all()
        self.assertTrue(closed(first))
        self.assertEqual(lane.parked, [])
        self.assertEqual(lane.py_first, 1)  # what the lane frees comes back to Python
        lane.finish("x")
        self.assertTrue(closed(second))

    def test_retire_reaches_the_lanes_parked_servers(self) -> None:
        rig, lane = self.rig()
        server = rig.member()
        rig.leases.retire(lambda s: s is server)
        self.assertTrue(closed(server))
        self.assertEqual(lane.parked, [])

    def test_harvest_adds_the_lanes_counts(self) -> None:
        rig, lane = self.rig()
        rig.leases.harvest()
        counters = rig.totals.of(A)
        self.assertEqual(
            (counters.queries, counters.xacts, counters.bytes_in, counters.bytes_out),
            (3, 2, 10, 20),
        )
        self.assertEqual(counters.wait_time, 0.25)
        self.assertEqual(counters.wait_hist[18], 1)  # 0.25 s: [2^17, 2^18) us

    def test_a_server_busy_on_the_lane_is_active_for_the_snapshot(self) -> None:
        rig, lane = self.rig()
        first, second = rig.members(A, False, False)
        self.assertEqual(rig.leases.busy_on_lanes(), {})
        lane.run("x")
        self.assertEqual(rig.leases.busy_on_lanes(), {second: "active"})
        self.assertEqual(rig.stats(), LeaseStats(1, 1, 0, 0, 0.0))
        lane.finish("x")
        self.assertEqual(rig.leases.busy_on_lanes(), {})

    def test_a_retired_server_busy_on_the_lane_is_closed_when_freed(self) -> None:
        rig, lane = self.rig()
        first, second = rig.members(A, False, False)
        lane.run("x")  # second, busy
        rig.leases.retire(lambda server: True)
        self.assertTrue(closed(first))  # idle: at once
        self.assertFalse(closed(second))
        lane.finish("x")
        self.assertTrue(closed(second))
        self.assertFalse(rig.leases.is_member(second))
        self.assertEqual(rig.stats(), LeaseStats(0, 0, 0, 0, 0.0))
