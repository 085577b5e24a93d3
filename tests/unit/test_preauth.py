"""Clients still authenticating (issue #20): no slot held, one cap, an exact timeout.

Sessions on a memory reactor with a fake clock: bytes in, what the session sent and did
out.  The real servers, psql and the C loop's lane are in
tests/integration/test_hardening.py.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.health import HealthCheckSettings
from pgpool_tw.net import transport
from pgpool_tw.net.deadlines import Deadlines
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.key import pool_key
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import read_startup_packet
from pgpool_tw.session.machine import Session
from pgpool_tw.session.preauth import PreAuth, startup_stage
from pgpool_tw.session.states import CONNECTING, RELAY, STARTUP, WAITING
from tests.unit.test_session_machine import Harness, RecordingIO, logged_in, startup_packet

MD5_REQUEST = m.message(b"R", m.INT32.pack(5) + b"salt")
PASSWORD = m.message(b"p", b"md5-whatever\0")


def login_server(harness: Harness, session: Session) -> BackendProtocol:
    """The new server a session's login opened, asking for an md5 password."""
    server = harness.new_server(session)
    server.dataReceived(MD5_REQUEST)
    return server


def let_in(server: BackendProtocol, pid: int = 4242) -> None:
    """PostgreSQL accepts the password and finishes the login."""
    server.dataReceived(logged_in(pid))


def stalled_and_newcomer(
    harness: Harness, stalled_for: float
) -> tuple[RecordingIO, Session, RecordingIO]:
    """A login whose client has not answered its password request for ``stalled_for``
    seconds, and a newcomer that sent its startup packet just now."""
    stalled, stalled_io = harness.session()
    stalled.client_data(startup_packet())
    login_server(harness, stalled)
    harness.reactor.advance(stalled_for)
    newcomer, io = harness.session()
    newcomer.client_data(startup_packet())
    return stalled_io, newcomer, io


class SlotTests(SynchronousTestCase):
    """A pass-through login (no pool_hba) takes its slot only once PostgreSQL let it in."""

    def test_logins_waiting_for_their_password_hold_no_slot(self) -> None:
        harness = Harness(num_init_children=1)
        stalled = []
        for _ in range(3):
            session, io = harness.session()
            session.client_data(startup_packet())
            login_server(harness, session)
            self.assertEqual(io.sent, [MD5_REQUEST])  # the server's request, relayed
            stalled.append(session)
        self.assertEqual(harness.pool.free_slots(), 1)
        self.assertEqual(len(harness.context.preauth), 3)
        # A real client, arriving last, answers at once and gets the one slot.
        real, io = harness.session()
        real.client_data(startup_packet())
        server = login_server(harness, real)
        real.client_data(PASSWORD)
        let_in(server)
        self.assertEqual(real.state, RELAY)
        self.assertEqual(harness.pool.free_slots(), 0)
        self.assertEqual(len(harness.context.preauth), 3)
        self.assertTrue(all(s.state == CONNECTING for s in stalled))

    def test_authenticated_client_waits_for_a_slot_with_its_server(self) -> None:
        """No slot free once PostgreSQL let it in: it waits, keeping its logged-in server
        (nobody else knows its password), and is attached when a slot frees."""
        harness = Harness(num_init_children=1)
        first, _ = harness.session()
        first.client_data(startup_packet())
        let_in(login_server(harness, first), pid=1)
        second, io = harness.session()
        second.client_data(startup_packet())
        server = login_server(harness, second)
        second.client_data(PASSWORD)
        let_in(server, pid=2)
        self.assertEqual(second.state, WAITING)
        self.assertEqual(len(harness.context.preauth), 0)  # authenticated: out of the cap
        first.client_lost()
        harness.reactor.advance(0)
        self.assertEqual((second.state, second.server), (RELAY, server))

    def test_a_key_known_to_need_no_password_takes_its_slot_first(self) -> None:
        """Once a login of the key needed no password, its clients share pooled servers
        as before: slot first, then a pooled server."""
        harness = Harness(num_init_children=1)
        harness.pool.learn_login(pool_key_of(harness), False)
        session, _ = harness.session()
        session.client_data(startup_packet())
        self.assertEqual(harness.pool.free_slots(), 0)
        self.assertEqual(len(harness.context.preauth), 0)


class FullServerTests(SynchronousTestCase):
    """PostgreSQL has no connection left: the login stalled longest on its client's
    password gives its server back to a newcomer (``PreAuth.evict_stalled``)."""

    def full(self, harness: Harness, session: Session) -> None:
        """The new server of ``session``'s login refuses it: too many clients."""
        server = harness.new_server(session)
        server.dataReceived(m.error_response("53300", "sorry, too many clients already", "FATAL"))

    def test_the_longest_stalled_login_gives_way(self) -> None:
        harness = Harness(num_init_children=5)
        stalled_io, newcomer, io = stalled_and_newcomer(harness, 1)
        self.full(harness, newcomer)
        self.assertEqual(stalled_io.error_code(), "53300")
        self.assertEqual(stalled_io.actions, ["close"])
        self.assertEqual(io.actions, [])  # not refused: tried again
        clients = len(harness.reactor.tcpClients)
        harness.reactor.advance(0.05)
        self.assertEqual(len(harness.reactor.tcpClients), clients + 1)
        let_in(harness.new_server(newcomer))
        self.assertEqual(newcomer.state, RELAY)

    def test_refused_after_its_authentication_ok_it_makes_room_for_the_next(self) -> None:
        """PostgreSQL checks its reserved connections after authentication: the client
        that was let in cannot log in again, but a stalled login still gives way."""
        harness = Harness(num_init_children=5)
        stalled_io, newcomer, io = stalled_and_newcomer(harness, 1)
        server = login_server(harness, newcomer)
        newcomer.client_data(PASSWORD)
        server.dataReceived(
            m.message(b"R", m.INT32.pack(m.AUTH_OK))
            + m.error_response("53300", "remaining connection slots are reserved", "FATAL")
        )
        self.assertEqual((stalled_io.error_code(), stalled_io.actions), ("53300", ["close"]))
        self.assertEqual((io.error_code(), io.actions), ("53300", ["close"]))

    def test_a_login_asked_a_moment_ago_is_left_alone(self) -> None:
        """Within STALL_GRACE the client is still answering: the newcomer gets
        PostgreSQL's own refusal."""
        harness = Harness(num_init_children=5)
        answering_io, newcomer, io = stalled_and_newcomer(harness, 0.1)
        self.full(harness, newcomer)
        self.assertEqual(answering_io.actions, [])
        self.assertEqual(io.error_code(), "53300")
        self.assertEqual(io.actions, ["close"])

    def test_a_login_that_answered_is_not_stalled(self) -> None:
        harness = Harness(num_init_children=5)
        answered, answered_io = harness.session()
        answered.client_data(startup_packet())
        login_server(harness, answered)
        answered.client_data(PASSWORD)  # the server's turn now
        harness.reactor.advance(5)
        newcomer, io = harness.session()
        newcomer.client_data(startup_packet())
        self.full(harness, newcomer)
        self.assertEqual((answered_io.actions, io.error_code()), ([], "53300"))


class ProbeTests(SynchronousTestCase):
    """A burst of first logins of a key opens one server to find out about passwords."""

    def test_trust_found_by_the_first_lets_the_rest_share(self) -> None:
        harness = Harness(num_init_children=5)
        first, _ = harness.session()
        first.client_data(startup_packet())
        others = [harness.session() for _ in range(3)]
        for session, _ in others:
            session.client_data(startup_packet())
            self.assertEqual(session.state, WAITING)
        self.assertEqual(len(harness.reactor.tcpClients), 1)  # the first's server only
        let_in(harness.new_server(first))  # no password asked: trust
        harness.reactor.advance(0)
        self.assertEqual(harness.pool.asks_password(first.key), False)
        # The rest take their slots first, as pooled clients of a trusted key do.
        self.assertEqual(harness.pool.free_slots(), 5 - 4)

    def test_a_password_asked_of_the_first_sends_the_rest_to_prove_themselves(self) -> None:
        harness = Harness(num_init_children=5)
        first, _ = harness.session()
        first.client_data(startup_packet())
        second, _ = harness.session()
        second.client_data(startup_packet())
        self.assertEqual(second.state, WAITING)
        login_server(harness, first)  # md5 asked
        harness.reactor.advance(0)
        self.assertEqual(second.state, CONNECTING)
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        self.assertEqual(harness.pool.free_slots(), 5)

    def test_a_probe_that_leaves_passes_the_question_on(self) -> None:
        harness = Harness()
        first, _ = harness.session()
        first.client_data(startup_packet())
        second, _ = harness.session()
        second.client_data(startup_packet())
        first.client_lost()
        harness.reactor.advance(0)
        self.assertEqual(second.state, CONNECTING)  # the new probe


def pool_key_of(harness: Harness) -> Any:
    startup, _ = read_startup_packet(startup_packet())
    return pool_key(0, startup)  # type: ignore[arg-type]


class TimeoutTests(SynchronousTestCase):
    """authentication_timeout counts from the accept, to the clock's tick."""

    def test_fires_exactly_at_the_timeout(self) -> None:
        harness = Harness(authentication_timeout=5)
        session, io = harness.session()
        harness.reactor.advance(4.999)
        self.assertEqual(io.actions, [])
        harness.reactor.advance(0.002)
        self.assertEqual(io.actions, ["close"])
        self.assertEqual(io.sent, [])  # before its startup packet: closed, as PostgreSQL does
        self.assertEqual(harness.context.preauth.timed_out_total, 1)

    def test_counts_from_an_earlier_accept(self) -> None:
        """A client the C loop accepted 3 s ago has 2 s left of a 5 s timeout."""
        harness = Harness(authentication_timeout=5)
        harness.reactor.advance(100)
        on_time, io_on_time = harness.session()  # a timeout due at 105
        late = Session(harness.context, io := type(io_on_time)())
        late.connected(since=97.0)  # due at 102: goes before the first in the queue
        harness.reactor.advance(1.999)
        self.assertEqual(io.actions, [])
        harness.reactor.advance(0.002)
        self.assertEqual(io.actions, ["close"])
        self.assertEqual(io_on_time.actions, [])
        harness.reactor.advance(3)
        self.assertEqual(io_on_time.actions, ["close"])

    def test_a_login_waiting_for_its_password_gets_57014(self) -> None:
        harness = Harness(authentication_timeout=5)
        session, io = harness.session()
        session.client_data(startup_packet())
        login_server(harness, session)
        self.assertEqual(
            session._stage(),  # noqa: SLF001 - what the log line names
            "the client's password (asked by the server)",
        )
        harness.reactor.advance(5)
        self.assertEqual(io.error_code(), "57014")
        self.assertEqual(io.actions, ["close"])

    def test_authenticated_client_has_no_timeout_left(self) -> None:
        harness = Harness(authentication_timeout=5)
        session, io = harness.session()
        session.client_data(startup_packet())
        server = login_server(harness, session)
        session.client_data(PASSWORD)
        let_in(server)
        harness.reactor.advance(60)
        self.assertEqual((session.state, io.actions), (RELAY, ["start_relay"]))

    def test_stage_of_a_startup_packet(self) -> None:
        harness = Harness()
        session, _ = harness.session()
        self.assertEqual(session._stage(), startup_stage(0))  # noqa: SLF001
        session.client_data(startup_packet()[:7])
        self.assertEqual(session.state, STARTUP)
        self.assertEqual(
            session._stage(),  # noqa: SLF001
            "the rest of the startup packet (7 bytes received)",
        )


class CapTests(SynchronousTestCase):
    """max_preauth_clients: past it the oldest unauthenticated client is closed."""

    def test_oldest_goes_first(self) -> None:
        harness = Harness(max_preauth_clients=2)
        sessions = []
        for _ in range(3):
            sessions.append(harness.session())
            harness.reactor.advance(1)
        (_, oldest_io), (_, second_io), (_, third_io) = sessions
        self.assertEqual(oldest_io.error_code(), "53300")
        self.assertEqual(oldest_io.actions, ["close"])
        self.assertEqual((second_io.actions, third_io.actions), ([], []))
        self.assertEqual(harness.context.preauth.shed_total, 1)

    def test_authenticated_clients_do_not_count(self) -> None:
        harness = Harness(max_preauth_clients=1, num_init_children=5)
        first, io = harness.session()
        first.client_data(startup_packet())
        server = login_server(harness, first)
        first.client_data(PASSWORD)
        let_in(server)
        _, second_io = harness.session()
        self.assertEqual((io.actions, second_io.actions), (["start_relay"], []))

    def test_default_is_a_generous_multiple(self) -> None:
        harness = Harness(num_init_children=100)
        self.assertEqual(harness.config.preauth_cap, 6400)
        self.assertEqual(Harness(num_init_children=2).config.preauth_cap, 1024)


class ConnectTimeoutTests(SynchronousTestCase):
    """connect_timeout: a server that is not reached in time is named to the client."""

    def harness(self) -> Harness:
        return Harness(health_check=HealthCheckSettings(connect_timeout=2.0))

    def test_unreached_server_gets_the_client_08006_naming_it(self) -> None:
        harness = self.harness()
        session, io = harness.session()
        session.client_data(startup_packet())
        harness.reactor.advance(1.999)
        self.assertEqual(io.actions, [])
        harness.reactor.advance(0.002)
        self.assertEqual(io.error_code(), "08006")
        self.assertIn(b'"127.0.0.1:5432"', b"".join(io.sent))
        self.assertEqual(io.actions, ["close"])

    def test_the_clients_password_time_is_not_the_servers(self) -> None:
        """While the client types its password, connect_timeout does not run."""
        harness = self.harness()
        session, io = harness.session()
        session.client_data(startup_packet())
        server = login_server(harness, session)
        harness.reactor.advance(30)
        self.assertEqual(io.actions, [])
        session.client_data(PASSWORD)
        harness.reactor.advance(1.9)
        let_in(server)
        harness.reactor.advance(10)
        self.assertEqual((session.state, io.actions), (RELAY, ["start_relay"]))


class RateLimitedLogTests(SynchronousTestCase):
    """Timeouts, sheds and failed logins: one line a second per kind, with counts."""

    def test_timeouts_of_one_second_make_one_line(self) -> None:
        from twisted.internet.task import Clock
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        preauth = PreAuth(clock, lambda: 10)
        for port in range(100):
            preauth.note_timeout(f"127.0.0.1:{port}", "the startup packet", 60)
        clock.advance(1)
        preauth.note_timeout("127.0.0.1:9999", "the startup packet", 60)
        lines = [e for e in events if "authentication_timeout" in str(e.get("log_format"))]
        self.assertEqual([e["client"] for e in lines], ["127.0.0.1:0", "127.0.0.1:9999"])
        self.assertEqual([e["more"] for e in lines], ["", " (99 more since the last)"])
        self.assertEqual(preauth.timed_out_total, 101)

    def test_a_failed_login_escapes_the_user_name(self) -> None:
        from twisted.internet.task import Clock
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        PreAuth(Clock(), lambda: 10).note_failed("127.0.0.1:1", "eve\nFAKE LINE", "pool_passwd")
        (line,) = [formatEvent(e) for e in events if "authentication failed" in formatEvent(e)]
        self.assertNotIn("\n", line)
        self.assertIn("eve\\nFAKE LINE", line)


class DeadlineOrderTests(SynchronousTestCase):
    def test_start_at_earlier_fires_first(self) -> None:
        from twisted.internet.task import Clock

        clock = Clock()
        deadlines = Deadlines(clock, 10)
        fired: list[str] = []
        deadlines.start(fired.append, "later")  # due at 10
        deadlines.start_at(4, fired.append, "earlier")
        clock.advance(4)
        self.assertEqual(fired, ["earlier"])
        clock.advance(6)
        self.assertEqual(fired, ["earlier", "later"])


class KeepaliveTests(SynchronousTestCase):
    def test_tcp_legs_get_the_keepalive_settings(self) -> None:
        if not hasattr(socket, "TCP_KEEPIDLE"):
            self.skipTest("no TCP_KEEPIDLE here")
        self.addCleanup(transport.set_keepalives, 0, 0, 0)
        transport.set_keepalives(77, 7, 3)
        with socket.socket() as skt:
            transport._set_tcp_options(skt)  # noqa: SLF001 - what tune_socket applies
            got = [
                skt.getsockopt(socket.IPPROTO_TCP, option)
                for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
            ]
            self.assertEqual(got, [77, 7, 3])
            self.assertEqual(skt.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
