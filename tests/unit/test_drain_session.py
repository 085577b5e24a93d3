"""Session.drain: where a draining session ends (machine.py), with no socket.

The recording ClientIO stands for the glue: ``drain_watch`` records the check the glue
would run after each server chunk, and the tests feed the tracker as the relay would.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.protocol import messages as m
from pgpool_tw.session.machine import DRAIN_TEXT, Session
from pgpool_tw.session.states import CLOSED, RELAY, WAITING
from tests.unit.test_session_machine import Harness, RecordingIO, startup_packet


class DrainIO(RecordingIO):
    def __init__(self) -> None:
        super().__init__()
        #: What drain_watch reports: the client's chunks since its relay began.
        self.spoken = 1
        self.checks: list[Callable[[], object]] = []

    def drain_watch(self, server: Any, stream: Any, check: Callable[[], object]) -> int:
        self.actions.append("drain_watch")
        self.checks.append(check)
        return self.spoken

    def tx_disarm(self) -> None:
        self.actions.append("tx_disarm")


class DrainTests(SynchronousTestCase):
    def start(self, harness: Harness, spoken: int = 1) -> tuple[Session, DrainIO, BackendProtocol]:
        io = DrainIO()
        io.spoken = spoken
        session = Session(harness.context, io)
        session.connected()
        session.client_data(startup_packet())
        server = harness.server_for(session)
        io.sent.clear()
        return session, io, server

    def statement(self, session: Session, server: BackendProtocol, status: int) -> None:
        """The client sends a query (the glue feeds the tracker); the server answers."""
        assert session.tracker is not None
        session.tracker.feed_client(m.query("select 1"))
        server.dataReceived(m.message(b"C", b"SELECT 1\0") + m.ready_for_query(status))

    def drained(self, io: DrainIO) -> Optional[dict[str, str]]:
        errors = [body for kind, body in io.messages() if kind == m.ERROR_RESPONSE]
        return m.parse_fields(errors[-1]) if errors else None

    def test_an_idle_session_ends_at_once(self) -> None:
        """Idle, having spoken: FATAL 57P01 with the drain's text, the server pooled."""
        harness = Harness()
        session, io, server = self.start(harness)
        session.drain()
        fields = self.drained(io)
        assert fields is not None
        self.assertEqual((fields["S"], fields["C"], fields["M"]), ("FATAL", "57P01", DRAIN_TEXT))
        self.assertEqual(session.state, CLOSED)
        self.assertEqual(io.actions[-1], "finish")
        self.assertIn("stop_relay", io.actions)
        self.assertIs(server.keeper, harness.pool)  # given back to be reset, not closed

    def test_a_fresh_session_runs_its_first_statement(self) -> None:
        """Not spoken since its login: no error until its first answer ends idle."""
        harness = Harness()
        session, io, server = self.start(harness, spoken=0)
        session.drain()
        self.assertIsNone(self.drained(io))
        self.assertEqual(session.state, RELAY)
        self.statement(session, server, m.IDLE)
        io.checks[-1]()
        self.assertEqual(session.state, CLOSED)
        kinds = [kind for kind, _ in io.messages()]
        self.assertEqual(kinds[-2:], [m.READY_FOR_QUERY, m.ERROR_RESPONSE])

    def test_a_transaction_ends_before_the_session(self) -> None:
        """In a transaction: answers go on; the first idle ReadyForQuery ends it."""
        harness = Harness()
        session, io, server = self.start(harness)
        self.statement(session, server, m.IN_TRANSACTION)
        session.drain()
        self.assertIsNone(self.drained(io))
        self.statement(session, server, m.IN_TRANSACTION)
        io.checks[-1]()
        self.assertEqual(session.state, RELAY)
        self.statement(session, server, m.IDLE)
        io.checks[-1]()
        self.assertEqual(session.state, CLOSED)
        fields = self.drained(io)
        assert fields is not None
        self.assertEqual(fields["C"], "57P01")

    def test_a_statement_sent_meanwhile_is_answered_first(self) -> None:
        """Client bytes still owed an answer keep the session until that answer."""
        harness = Harness()
        session, io, server = self.start(harness)
        self.statement(session, server, m.IN_TRANSACTION)
        session.drain()
        assert session.tracker is not None
        session.tracker.feed_client(m.query("commit") + m.query("select 2"))
        server.dataReceived(m.message(b"C", b"COMMIT\0") + m.ready_for_query(m.IDLE))
        io.checks[-1]()
        self.assertEqual(session.state, RELAY)  # select 2 is still owed
        server.dataReceived(m.message(b"C", b"SELECT 1\0") + m.ready_for_query(m.IDLE))
        io.checks[-1]()
        self.assertEqual(session.state, CLOSED)

    def test_a_session_logging_in_is_watched_once_attached(self) -> None:
        """A client waiting for a slot when the drain starts runs a transaction, then ends."""
        harness = Harness(num_init_children=1)
        first, _, server = self.start(harness)
        io = DrainIO()
        io.spoken = 0
        waiting = Session(harness.context, io)
        waiting.connected()
        waiting.client_data(startup_packet())
        self.assertEqual(waiting.state, WAITING)
        waiting.drain()
        self.assertNotIn("drain_watch", io.actions)
        first.client_terminated()
        harness.reactor.advance(0)
        server.dataReceived(m.ready_for_query(m.IDLE))  # the reset's end: handed over
        self.assertEqual(waiting.state, RELAY)
        self.assertIn("drain_watch", io.actions)
        self.assertIsNone(self.drained(io))
        self.statement(waiting, server, m.IDLE)
        io.checks[-1]()
        self.assertEqual(waiting.state, CLOSED)

    def test_drain_twice_is_once(self) -> None:
        harness = Harness()
        session, io, server = self.start(harness, spoken=0)
        session.drain()
        session.drain()
        self.assertEqual(io.actions.count("drain_watch"), 1)
