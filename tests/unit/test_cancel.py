"""pgpool_tw.session.cancel: the pooler's own cancel keys, the sessions they point to, and
a CancelRequest's way to the server: at most once, and only while what it was sent for
may still run (issue #20, item 5a; tests/integration/test_cancel_once.py repeats it)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pgpool_tw.cluster import session_state
from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.startup import cancel_request
from pgpool_tw.session.cancel import (
    DELIVERY_TIMEOUT,
    CancelRegistry,
    in_flight,
    lane_in_flight,
    leg_in_flight,
    new_secret,
)
from pgpool_tw.session.transaction import StatementNames, TransactionStream
from tests.unit.test_session_machine import Harness, RecordingIO, startup_packet


class Session:
    """A stand-in for a live client session."""


class CancelRegistryTests(SynchronousTestCase):
    def test_register_and_lookup(self) -> None:
        """A registered (pid, secret) looks up to its session."""
        registry: CancelRegistry[Session] = CancelRegistry()
        session = Session()
        registry.register(1234, -5678, session)
        self.assertIs(registry.lookup(1234, -5678), session)
        self.assertEqual(len(registry), 1)

    def test_wrong_key(self) -> None:
        """A known pid with the wrong secret finds nothing."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1234, 99, Session())
        for key in (98, 100, -99, 0):
            self.assertIsNone(registry.lookup(1234, key), key)

    def test_unknown_pid(self) -> None:
        """An unknown pid finds nothing, even with a registered secret."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1234, 99, Session())
        self.assertIsNone(registry.lookup(4321, 99))
        self.assertIsNone(CancelRegistry().lookup(1, 1))

    def test_unregister(self) -> None:
        """After its session unregisters, a key no longer finds it."""
        registry: CancelRegistry[Session] = CancelRegistry()
        session = Session()
        registry.register(1234, 99, session)
        registry.unregister(1234, session)
        self.assertIsNone(registry.lookup(1234, 99))
        self.assertEqual(len(registry), 0)

    def test_unregister_by_other_session_ignored(self) -> None:
        """Another session unregistering the same pid leaves the live entry alone."""
        registry: CancelRegistry[Session] = CancelRegistry()
        old, new = Session(), Session()
        registry.register(1234, 1, old)
        registry.register(1234, 2, new)  # the pooled server now serves another client
        registry.unregister(1234, old)  # the old client's late cleanup
        self.assertIs(registry.lookup(1234, 2), new)
        self.assertIsNone(registry.lookup(1234, 1))
        self.assertEqual(len(registry), 1)

    def test_unregister_unknown_pid(self) -> None:
        """Unregistering a pid that was never registered does nothing."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1, 1, Session())
        registry.unregister(2, Session())
        self.assertEqual(len(registry), 1)

    def test_out_of_range_key(self) -> None:
        """A key outside signed Int32 finds nothing instead of raising."""
        registry: CancelRegistry[Session] = CancelRegistry()
        registry.register(1234, 2**31 - 1, Session())
        registry.register(5, -(2**31), Session())
        for key in (2**31, -(2**31) - 1, 2**32 + 2**31 - 1, 2**64):
            self.assertIsNone(registry.lookup(1234, key), key)
        self.assertIsNone(registry.lookup(5, 2**31))
        self.assertIsNone(registry.lookup(999, 2**40))

    def test_extreme_keys(self) -> None:
        """The smallest and largest signed Int32 secrets both work."""
        registry: CancelRegistry[Session] = CancelRegistry()
        low, high = Session(), Session()
        registry.register(1, -(2**31), low)
        registry.register(2, 2**31 - 1, high)
        self.assertIs(registry.lookup(1, -(2**31)), low)
        self.assertIs(registry.lookup(2, 2**31 - 1), high)

    def test_sessions_kept_apart(self) -> None:
        """Each pid's key finds its own session only."""
        registry: CancelRegistry[Session] = CancelRegistry()
        one, two = Session(), Session()
        registry.register(1, 11, one)
        registry.register(2, 22, two)
        self.assertIs(registry.lookup(1, 11), one)
        self.assertIs(registry.lookup(2, 22), two)
        self.assertIsNone(registry.lookup(1, 22))
        self.assertIsNone(registry.lookup(2, 11))


class NewSecretTests(SynchronousTestCase):
    def test_signed_int32(self) -> None:
        """new_secret returns ints within the signed Int32 range."""
        for _ in range(200):
            secret = new_secret()
            self.assertIsInstance(secret, int)
            self.assertTrue(-(2**31) <= secret < 2**31, secret)

    def test_negative_values_occur(self) -> None:
        """new_secret uses the whole signed range, negatives included."""
        secrets_ = [new_secret() for _ in range(200)]
        self.assertTrue(any(s < 0 for s in secrets_))
        self.assertTrue(any(s >= 0 for s in secrets_))

    def test_varies(self) -> None:
        """Successive secrets differ."""
        self.assertGreater(len({new_secret() for _ in range(50)}), 45)


def _trackers() -> list[Any]:
    """Python's session tracker and, when built, its C twin: the rule reads both alike."""
    kinds: list[Any] = [SessionTracker]
    if speedups is not None:
        kinds.append(speedups.SessionTracker)
    return kinds


class InFlightTests(SynchronousTestCase):
    """``in_flight``: what a session's tracker has under way, read at arrival and at send."""

    def test_idle_has_nothing_in_flight(self) -> None:
        """A tracker whose every statement answered binds no cancel."""
        for kind in _trackers():
            tracker = kind({})
            self.assertIsNone(in_flight(tracker), kind)
            tracker.feed_client(m.query("select 1"))
            tracker.feed_server(m.ready_for_query(m.IDLE))
            self.assertIsNone(in_flight(tracker), kind)

    def test_running_until_its_ready_for_query(self) -> None:
        """A statement sent is in flight until the ReadyForQuery that answers it."""
        for kind in _trackers():
            tracker = kind({})
            tracker.feed_client(m.query("select pg_sleep(1)"))
            still = in_flight(tracker)
            assert still is not None, kind
            tracker.feed_server(m.message(b"C", b"SELECT 1\0"))
            self.assertTrue(still(), kind)
            tracker.feed_server(m.ready_for_query(m.IDLE))
            self.assertFalse(still(), kind)

    def test_the_next_statement_is_not_the_one_it_was_sent_for(self) -> None:
        """Once the statement answered, the client's next one does not revive the cancel."""
        for kind in _trackers():
            tracker = kind({})
            tracker.feed_client(m.query("select pg_sleep(1)"))
            still = in_flight(tracker)
            assert still is not None, kind
            tracker.feed_server(m.error_response("57014", "canceling statement"))
            tracker.feed_server(m.ready_for_query(m.IN_FAILED_TRANSACTION))
            time.sleep(0.001)  # the clock moves between two busy periods, as it does
            tracker.feed_client(m.query("rollback"))
            self.assertFalse(still(), kind)
            tracker.feed_server(m.message(b"C", b"ROLLBACK\0") + m.ready_for_query(m.IDLE))
            tracker.feed_client(m.query("select 1"))
            self.assertFalse(still(), kind)

    def test_a_pipeline_is_one_busy_period(self) -> None:
        """Statements sent before the first answered stay bound to a cancel until the last
        answered (a pipeline is cancelled as a whole)."""
        for kind in _trackers():
            tracker = kind({})
            tracker.feed_client(m.query("select 1") + m.query("select pg_sleep(1)"))
            still = in_flight(tracker)
            assert still is not None, kind
            tracker.feed_server(m.ready_for_query(m.IDLE))
            self.assertTrue(still(), kind)
            tracker.feed_server(m.ready_for_query(m.IDLE))
            self.assertFalse(still(), kind)

    def test_an_execute_without_sync_is_in_flight(self) -> None:
        """Extended-protocol messages with no Sync yet (Execute, Flush) may be running."""
        execute = m.message(b"E", b"\0" + m.INT32.pack(0)) + m.message(b"H")
        for kind in _trackers():
            tracker = kind({})
            tracker.feed_client(execute)
            still = in_flight(tracker)
            assert still is not None, kind
            tracker.feed_client(m.message(b"S"))
            self.assertTrue(still(), kind)
            tracker.feed_server(m.ready_for_query(m.IDLE))
            self.assertFalse(still(), kind)


class _Lane:
    """What ``lane_in_flight`` reads of the C lane's TxClient."""

    def __init__(self) -> None:
        self.owed = False
        self.sent_at = 0.0


class LaneInFlightTests(SynchronousTestCase):
    def test_lane_statement(self) -> None:
        """A statement the transaction lane runs is in flight until it answered; the next
        one (sent later) is not the same."""
        client = _Lane()
        self.assertIsNone(lane_in_flight(client))
        client.owed, client.sent_at = True, 1.0
        still = lane_in_flight(client)
        assert still is not None
        self.assertTrue(still())
        client.owed = False
        self.assertFalse(still())
        client.owed, client.sent_at = True, 2.0
        self.assertFalse(still())


class _Unit:
    def __init__(self, client: bool = True) -> None:
        self.client = client


class _Leg:
    def __init__(self) -> None:
        self.units: deque[_Unit] = deque()


class _Fast:
    def __init__(self) -> None:
        self.busy = -1
        self.received = 0


class _Stream:
    def __init__(self) -> None:
        self.legs = [_Leg(), _Leg()]
        self.fast: Optional[_Fast] = None


class LegInFlightTests(SynchronousTestCase):
    """``leg_in_flight``: a routed session's leg, on Python's stream or the C router."""

    def test_units_owed_by_the_leg(self) -> None:
        """Bound to the client's units the leg owed at arrival; the pooler's own units and
        units sent later do not count."""
        stream = _Stream()
        leg = stream.legs[1]
        leg.units.append(_Unit(client=False))
        self.assertIsNone(leg_in_flight(stream, 1))
        first, second = _Unit(), _Unit()
        leg.units.extend((first, second))
        still = leg_in_flight(stream, 1)
        assert still is not None
        leg.units.popleft()
        leg.units.popleft()
        self.assertTrue(still())
        leg.units.popleft()
        leg.units.append(_Unit())  # the next statement
        self.assertFalse(still())
        self.assertIsNone(leg_in_flight(stream, 0))

    def test_statement_of_the_c_router(self) -> None:
        """A statement the C router forwards on that leg, until it ends or another starts."""
        stream = _Stream()
        fast = stream.fast = _Fast()
        fast.busy, fast.received = 0, 5
        still = leg_in_flight(stream, 0)
        assert still is not None
        self.assertIsNone(leg_in_flight(stream, 1))
        self.assertTrue(still())
        fast.busy = -1
        self.assertFalse(still())
        fast.busy, fast.received = 0, 6
        self.assertFalse(still())


class TransactionStreamInFlightTests(SynchronousTestCase):
    def test_transaction_stream(self) -> None:
        """A transaction-mode client's statement on the server it holds, as a session's."""
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")
        from tests.unit.test_transaction_stream import FakeServer, Owner

        owner = Owner()
        stream = TransactionStream([].append, owner, StatementNames(), 200, "app", None)
        owner.stream = stream
        self.assertIsNone(in_flight(stream))
        stream.feed_client(m.query("select pg_sleep(1)"))
        self.assertIsNone(in_flight(stream))  # held: it waits for a server, runs nowhere
        stream.attach(FakeServer())  # type: ignore[arg-type]
        still = in_flight(stream)
        assert still is not None
        self.assertTrue(still())
        stream.feed_server(m.message(b"C", b"SELECT 1\0") + m.ready_for_query(m.IDLE))
        self.assertFalse(still())


class ForwardTests(SynchronousTestCase):
    """A CancelRequest through a session: bytes in, connections and bytes out."""

    def setUp(self) -> None:
        self.harness = Harness()
        session, io = self.harness.session()
        session.client_data(startup_packet())
        self.server = self.harness.server_for(session)
        self.session = session
        (key_body,) = [body for kind, body in io.messages() if kind == m.BACKEND_KEY_DATA]
        self.key = m.parse_backend_key_data(key_body)
        assert session.tracker is not None
        self.tracker = session.tracker
        self.connections = len(self.harness.reactor.tcpClients)

    def cancel(self, *packets: bytes) -> RecordingIO:
        """A client sends ``packets`` (a CancelRequest with the session's key by default)."""
        canceller, io = self.harness.session()
        canceller.client_data(b"".join(packets) or cancel_request(*self.key))
        return io

    def deliveries(self) -> list[Any]:
        """The factories of the cancel connections opened since the session started."""
        return [c[2] for c in self.harness.reactor.tcpClients[self.connections :]]

    def connect(self, factory: Any) -> tuple[Any, StringTransport]:
        """The server accepts a cancel connection: what the pooler wrote on it."""
        delivery = factory.buildProtocol(None)
        transport = StringTransport()
        delivery.makeConnection(transport)
        return delivery, transport

    def test_idle_session_drops_the_cancel(self) -> None:
        """Nothing runs: no connection to the server, the client's connection closes."""
        io = self.cancel()
        self.assertEqual(self.deliveries(), [])
        self.assertEqual(io.actions, ["finish"])

    def test_one_request_one_delivery(self) -> None:
        """A statement runs: one connection to its node with the server's own pid and key,
        written once; the client's connection closes when the server closed it."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        io = self.cancel()
        (factory,) = self.deliveries()
        self.assertEqual(io.actions, [])
        delivery, transport = self.connect(factory)
        self.assertEqual(transport.value(), cancel_request(self.server.pid, self.server.secret))
        self.assertEqual(self.server.pid, 4242)
        self.assertEqual(io.actions, [])
        delivery.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(io.actions, ["finish"])
        self.assertEqual(len(self.deliveries()), 1)

    def test_repeated_request_on_one_connection_is_read_once(self) -> None:
        """Bytes after a CancelRequest are not read (PostgreSQL reads no more either)."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        request = cancel_request(*self.key)
        self.cancel(request, request)
        self.assertEqual(len(self.deliveries()), 1)

    def test_statement_answered_before_the_connection_is_up(self) -> None:
        """The statement answered, the client sent its next one: the cancel is not sent."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        io = self.cancel()
        (factory,) = self.deliveries()
        self.server.dataReceived(m.error_response("57014", "canceled") + m.ready_for_query(m.IDLE))
        time.sleep(0.001)
        self.tracker.feed_client(m.query("select 1"))
        delivery, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        delivery.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(io.actions, ["finish"])

    def test_server_given_back_before_the_connection_is_up(self) -> None:
        """The session ended meanwhile: its server may run another client's statement."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        self.cancel()
        (factory,) = self.deliveries()
        self.session.client_lost()
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"")

    def test_unreachable_server(self) -> None:
        """A failed connection is not retried; the client's connection closes."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        io = self.cancel()
        (factory,) = self.deliveries()
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(io.actions, ["finish"])
        self.assertEqual(len(self.deliveries()), 1)

    def test_silent_server(self) -> None:
        """A server that never closes the cancel connection: given up after a while."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        io = self.cancel()
        (factory,) = self.deliveries()
        delivery, transport = self.connect(factory)
        self.harness.reactor.advance(DELIVERY_TIMEOUT)
        self.assertTrue(transport.disconnecting)
        delivery.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(io.actions, ["finish"])

    def test_client_gone_before_the_answer(self) -> None:
        """A client that closed its cancel connection first is not closed again."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        canceller, io = self.harness.session()
        canceller.client_data(cancel_request(*self.key))
        canceller.client_lost()
        (factory,) = self.deliveries()
        delivery, _ = self.connect(factory)
        delivery.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(io.actions, [])

    def test_routed_session_without_a_load_balancing_leg(self) -> None:
        """A routed session with its primary leg only: bound to that leg's units."""
        stream = _Stream()
        stream.legs = stream.legs[:1]
        self.session.routed = stream  # type: ignore[assignment]
        self.assertEqual(self.session.cancel_targets(), [])
        stream.legs[0].units.append(_Unit())
        (target,) = self.session.cancel_targets()
        self.assertEqual((target.pid, target.secret), (self.server.pid, self.server.secret))
        self.assertTrue(target.still())
        stream.legs[0].units.clear()
        self.assertFalse(target.still())

    def test_unknown_key_is_dropped(self) -> None:
        """A key of no session: no connection, the client's connection closes."""
        self.tracker.feed_client(m.query("select pg_sleep(1)"))
        io = self.cancel(cancel_request(self.key[0], self.key[1] ^ 1))
        self.assertEqual(self.deliveries(), [])
        self.assertEqual(io.actions, ["finish"])
