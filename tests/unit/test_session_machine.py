"""pgpool_tw.session.machine: one client's life with no socket, bytes and events in.

A ``Session`` is driven here exactly as the Twisted glue drives it, through a
recording ``ClientIO``; the reactor is Twisted's ``MemoryReactorClock``, so a
server connection the session opens is a recorded ``connectTCP`` and time moves
only when a test says so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster.cluster import UP
from pgpool_tw.cluster.cluster import WAITING as WAITING_STATUS
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.key import pool_key
from pgpool_tw.pool.pool import Pool
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.startup import cancel_request
from pgpool_tw.session.context import SessionContext
from pgpool_tw.session.machine import MAX_EARLY_BYTES, Session
from pgpool_tw.session.states import (
    AUTHENTICATING,
    CLOSED,
    CONNECTING,
    RELAY,
    SETTING,
    STARTUP,
    WAITING,
)

NODE = BackendNode(0, "127.0.0.1", 5432)
SSL_REQUEST = m.UINT32.pack(8) + m.UINT32.pack(80877103)
GSSENC_REQUEST = m.UINT32.pack(8) + m.UINT32.pack(80877104)


def startup_packet(user: str = "alice", database: str = "app", application: str = "") -> bytes:
    body = m.INT32.pack(196608) + m.cstring("user") + m.cstring(user)
    body += m.cstring("database") + m.cstring(database)
    if application:
        body += m.cstring("application_name") + m.cstring(application)
    body += b"\0"
    return m.UINT32.pack(len(body) + 4) + body


class RecordingIO:
    """A client connection that records what the session did to it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.actions: list[str] = []
        self.relayed: list[bytes] = []

    @property
    def peer(self) -> str:
        return "10.0.0.1:5000"

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.actions.append("close")

    def finish(self) -> None:
        self.actions.append("finish")

    def start_tls(self, context: Any) -> None:
        self.actions.append("start_tls")

    def peer_host(self) -> Optional[str]:
        return "10.0.0.1"

    def peer_common_name(self) -> Optional[str]:
        return None

    def start_relay(
        self,
        server: BackendProtocol,
        tracker: SessionTracker,
        routed: bool,
        lb: Optional[BackendProtocol] = None,
    ) -> None:
        self.actions.append("start_relay")
        if lb is not None:
            self.actions.append("add_leg")

    def stop_relay(self, server: BackendProtocol) -> None:
        self.actions.append("stop_relay")

    def drop_leg(self, server: BackendProtocol) -> None:
        self.actions.append("drop_leg")

    def start_tx_relay(self, stream: Any, *lane: Any) -> None:
        self.actions.append("start_tx_relay")

    def tx_arm(self, tag: int) -> None:
        self.actions.append("tx_arm")

    def tx_fast_server(self) -> Optional[BackendProtocol]:
        return None

    def tx_lane_client(self) -> Any:
        return None

    def tx_hold(self, server: BackendProtocol) -> bool:
        return False

    def tx_stop(self) -> None:
        self.actions.append("tx_stop")

    def tx_attach(self, server: BackendProtocol) -> None:
        self.actions.append("tx_attach")

    def tx_detach(self, server: BackendProtocol) -> None:
        self.actions.append("tx_detach")

    def replay(self, data: bytes) -> None:
        self.relayed.append(data)

    def messages(self) -> list[tuple[int, bytes]]:
        return m.MessageReader().feed(b"".join(self.sent))

    def error_code(self) -> str:
        """The SQLSTATE of the last thing sent, which must be an ErrorResponse."""
        ((kind, body),) = m.MessageReader().feed(self.sent[-1])
        assert kind == m.ERROR_RESPONSE
        return m.parse_fields(body)["C"]


class Harness:
    """A context, a pool and sessions on a memory reactor."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("backends", (NODE,))
        self.config = dataclasses.replace(Config(), **settings)
        self.reactor = MemoryReactorClock()
        self.pool = Pool(self.config, self.reactor)
        self.context = SessionContext(self.config, self.pool, self.reactor)

    def session(self) -> tuple[Session, RecordingIO]:
        io = RecordingIO()
        session = Session(self.context, io)
        session.connected()
        return session, io

    def new_server(self, session: Session) -> BackendProtocol:
        """The server connection the session's login opened, connected, silent so far."""
        assert session.startup is not None and session.server_login is not None
        server = BackendProtocol(NODE, session.startup, self.reactor, self.context.servers)
        server.owner = session.server_login  # what connector.BackendFactory does
        server.makeConnection(StringTransport())
        return server

    def server_for(self, session: Session, pid: int = 4242) -> BackendProtocol:
        """The server connection the session asked for, logged in as PostgreSQL would."""
        server = self.new_server(session)
        server.dataReceived(logged_in(pid))
        return server


def logged_in(pid: int = 4242) -> bytes:
    """A server's end of a login: AuthenticationOk to ReadyForQuery."""
    return (
        m.message(b"R", m.INT32.pack(m.AUTH_OK))
        + m.parameter_status("server_version", "15.0")
        + m.message(b"K", m.INT32.pack(pid) + m.INT32.pack(777))
        + m.ready_for_query(m.IDLE)
    )


class StartupTests(SynchronousTestCase):
    def test_startup_split_byte_by_byte_connects_to_the_primary(self) -> None:
        """A startup packet fed one byte at a time opens one server connection to node 0."""
        harness = Harness()
        session, io = harness.session()
        for byte in startup_packet():
            self.assertEqual(session.state, STARTUP)
            session.client_data(bytes([byte]))
        self.assertEqual(session.state, CONNECTING)
        ((host, port, *_),) = harness.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 5432))
        self.assertEqual(io.sent, [])

    def test_ssl_and_gss_requests_answered_n_once_each(self) -> None:
        """Without TLS, SSLRequest and GSSENCRequest are each answered N, then the login goes on."""
        session, io = Harness().session()
        session.client_data(SSL_REQUEST + GSSENC_REQUEST + startup_packet())
        self.assertEqual(io.sent, [b"N", b"N"])
        self.assertEqual(session.state, CONNECTING)

    def test_second_ssl_request_is_a_protocol_violation(self) -> None:
        """A repeated SSLRequest gets FATAL 08P01 and the connection closes."""
        session, io = Harness().session()
        session.client_data(SSL_REQUEST + SSL_REQUEST)
        self.assertEqual(io.error_code(), "08P01")
        self.assertEqual(io.actions, ["close"])

    def test_plaintext_after_ssl_request_is_refused(self) -> None:
        """Bytes that follow an SSLRequest in the same chunk are never taken as encrypted."""
        harness = Harness()
        harness.context.tls = dataclasses.replace(harness.context.tls, frontend=object())
        session, io = harness.session()
        session.client_data(SSL_REQUEST + startup_packet())
        self.assertEqual(io.error_code(), "08P01")
        self.assertNotIn("start_tls", io.actions)

    def test_ssl_request_starts_tls_when_configured(self) -> None:
        """With a server certificate, SSLRequest is answered S and TLS starts."""
        harness = Harness()
        harness.context.tls = dataclasses.replace(harness.context.tls, frontend=object())
        session, io = harness.session()
        session.client_data(SSL_REQUEST)
        self.assertEqual((io.sent, io.actions), ([b"S"], ["start_tls"]))
        self.assertTrue(session.ssl)

    def test_login_timer_closes_a_silent_client(self) -> None:
        """A client that sends nothing within authentication_timeout is closed."""
        harness = Harness(authentication_timeout=5)
        session, io = harness.session()
        harness.reactor.advance(4.9)
        self.assertEqual(io.actions, [])
        harness.reactor.advance(0.2)
        self.assertEqual(io.actions, ["close"])


class SessionTests(SynchronousTestCase):
    def start(self, harness: Harness) -> tuple[Session, RecordingIO, BackendProtocol]:
        session, io = harness.session()
        session.client_data(startup_packet())
        server = harness.server_for(session)
        return session, io, server

    def test_attach_sends_what_a_direct_login_ends_with(self) -> None:
        """Attaching sends AuthenticationOk, ParameterStatus, the pooler's key, ReadyForQuery."""
        harness = Harness()
        session, io, server = self.start(harness)
        kinds = [kind for kind, _ in io.messages()]
        self.assertEqual(
            kinds,
            [m.AUTHENTICATION, m.PARAMETER_STATUS, m.BACKEND_KEY_DATA, m.READY_FOR_QUERY],
        )
        (key_body,) = [body for kind, body in io.messages() if kind == m.BACKEND_KEY_DATA]
        pid, secret = m.parse_backend_key_data(key_body)
        self.assertEqual(pid, 4242)
        self.assertNotEqual(secret, server.secret)  # the pooler's own key, never the server's
        self.assertEqual(session.state, RELAY)
        self.assertEqual(io.actions, ["start_relay"])

    def test_bytes_sent_while_setting_are_replayed_through_the_relay(self) -> None:
        """A pooled server runs SET application_name; a query sent meanwhile is relayed after."""
        harness = Harness()
        first, _, server = self.start(harness)
        first.client_terminated()  # reset: DISCARD ALL, answered below
        server.dataReceived(m.ready_for_query(m.IDLE))
        second, io = harness.session()
        second.client_data(startup_packet(application="report") + m.query("select 1"))
        self.assertEqual(second.state, SETTING)
        server.dataReceived(m.ready_for_query(m.IDLE))  # SET application_name done
        self.assertEqual(second.state, RELAY)
        self.assertEqual(io.relayed, [m.query("select 1")])

    def test_too_many_early_bytes_are_refused(self) -> None:
        """A waiting client that sends more than MAX_EARLY_BYTES gets FATAL 08P01."""
        harness = Harness(num_init_children=1)
        self.start(harness)
        waiting, io = harness.session()
        waiting.client_data(startup_packet())
        self.assertEqual(waiting.state, WAITING)
        waiting.client_data(b"x" * (MAX_EARLY_BYTES + 1))
        self.assertEqual(io.error_code(), "08P01")

    def test_waiting_client_admitted_when_a_slot_frees(self) -> None:
        """With num_init_children = 1 the second client waits, untimed, then reuses the server."""
        harness = Harness(num_init_children=1, authentication_timeout=5)
        first, first_io, server = self.start(harness)
        second, second_io = harness.session()
        second.client_data(startup_packet())
        self.assertEqual(second.state, WAITING)
        harness.reactor.advance(60)  # a waiting client is never timed out
        self.assertEqual(second_io.actions, [])
        first.client_lost()  # end of file while idle: the server is reset for the next client
        harness.reactor.advance(0)
        self.assertEqual(second.state, WAITING)  # it claimed the server being reset
        server.dataReceived(m.ready_for_query(m.IDLE))  # DISCARD ALL done
        self.assertEqual(second.state, RELAY)
        self.assertIs(second.server, server)
        self.assertEqual(len(harness.reactor.tcpClients), 1)

    def test_cancel_request_reaches_the_server_with_its_own_key(self) -> None:
        """A CancelRequest with the session's key, while it runs a statement, opens a
        connection to that session's node (tests/unit/test_cancel.py: the rest)."""
        harness = Harness()
        session, io, server = self.start(harness)
        assert session.tracker is not None
        session.tracker.feed_client(m.query("select pg_sleep(1)"))
        (key_body,) = [body for kind, body in io.messages() if kind == m.BACKEND_KEY_DATA]
        pid, secret = m.parse_backend_key_data(key_body)
        canceller, canceller_io = harness.session()
        canceller.client_data(cancel_request(pid, secret))
        self.assertEqual(canceller_io.actions, [])  # closed once the server closed
        self.assertEqual(len(harness.reactor.tcpClients), 2)

    def test_cancel_request_with_a_wrong_key_is_dropped(self) -> None:
        """A CancelRequest with any other key opens no connection."""
        harness = Harness()
        session, io, server = self.start(harness)
        canceller, canceller_io = harness.session()
        canceller.client_data(cancel_request(server.pid, server.secret))
        self.assertEqual(canceller_io.actions, ["finish"])
        self.assertEqual(len(harness.reactor.tcpClients), 1)

    def test_terminate_ends_the_session_and_returns_the_server(self) -> None:
        """A clean Terminate stops the relay, frees the slot and leaves the session closed."""
        harness = Harness(num_init_children=1)
        session, io, _ = self.start(harness)
        session.client_terminated()
        self.assertEqual(session.state, CLOSED)
        self.assertEqual(io.actions, ["start_relay", "stop_relay", "finish"])
        self.assertEqual(len(harness.pool.sessions), 0)

    def test_lost_server_mid_session_tells_the_client(self) -> None:
        """A server that goes away at a message boundary while the client waits for an
        answer gives the client FATAL 08006."""
        harness = Harness()
        session, io, server = self.start(harness)
        assert session.tracker is not None
        session.tracker.feed_client(m.query("select 1"))
        io.sent.clear()
        session.server_lost(server, "connection reset")
        self.assertEqual(io.error_code(), "08006")
        self.assertEqual(io.actions[-1], "close")
        session.client_lost()  # the glue reports the close; nothing is released twice
        self.assertEqual(session.state, CLOSED)

    def test_lost_server_of_an_idle_session_adds_no_error(self) -> None:
        """Owed nothing, the client hears what the server said (a FATAL, or nothing), as
        from a direct connection: a second error would answer its next statement."""
        harness = Harness()
        session, io, server = self.start(harness)
        io.sent.clear()
        session.server_lost(server, "connection reset")
        self.assertEqual((io.sent, io.actions[-1]), ([], "close"))

    def test_fast_shutdown_sends_57p01(self) -> None:
        """A fast shutdown tells a relaying client FATAL 57P01 between messages."""
        harness = Harness()
        session, io, _ = self.start(harness)
        io.sent.clear()
        session.shut_down()
        self.assertEqual(io.error_code(), "57P01")


class StatesTests(SynchronousTestCase):
    def test_pool_hba_password_exchange_moves_to_authenticating(self) -> None:
        """With enable_pool_hba and an md5 rule, the session asks for a password first."""
        from pgpool_tw.config.authfiles import AuthFiles
        from pgpool_tw.config.hba import parse_hba
        from pgpool_tw.config.passwd import md5_entry, parse_passwd

        harness = Harness(enable_pool_hba=True)
        entries, _ = parse_passwd(md5_entry("alice", "secret") + "\n")
        harness.context.auth_files = AuthFiles(
            rules=parse_hba("host all all 0.0.0.0/0 md5\n"), secrets=entries
        )
        session, io = harness.session()
        session.client_data(startup_packet())
        self.assertEqual(session.state, AUTHENTICATING)
        ((kind, body),) = io.messages()
        self.assertEqual((kind, m.auth_code(body)), (m.AUTHENTICATION, m.AUTH_MD5))


class SplitTests(SynchronousTestCase):
    @given(
        cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=8),
        gss=st.booleans(),
        ssl=st.booleans(),
    )
    @settings(max_examples=200, deadline=None)
    def test_opening_bytes_split_anywhere_give_one_outcome(
        self, cuts: list[int], gss: bool, ssl: bool
    ) -> None:
        """SSL/GSS requests and a startup packet cut at any points are answered the same."""
        stream = (SSL_REQUEST if ssl else b"") + (GSSENC_REQUEST if gss else b"")
        stream += startup_packet(application="app") + m.query("select 1")
        harness = Harness(num_init_children=1)
        first, _ = harness.session()
        first.client_data(startup_packet())  # finds out whether the key needs a password
        session, io = harness.session()
        last = 0
        for cut in sorted(set(cuts)) + [len(stream)]:
            session.client_data(stream[last:cut])
            last = max(last, cut)
        self.assertEqual(b"".join(io.sent), b"N" * (ssl + gss))
        self.assertEqual((session.state, io.actions), (WAITING, []))  # for the first
        self.assertEqual(session.startup.application_name, "app")  # type: ignore[union-attr]


class NodeTests(SynchronousTestCase):
    def test_session_uses_the_primary_node_and_keys_its_pool_by_it(self) -> None:
        """With only backend_hostname3 set, the session connects to node 3 and its key says so."""
        node = BackendNode(3, "127.0.0.3", 5433)
        harness = Harness(backends=(node,))
        session, _ = harness.session()
        session.client_data(startup_packet())
        ((host, port, *_),) = harness.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.3", 5433))
        assert session.key is not None
        self.assertEqual(session.key.node, 3)
        self.assertNotEqual(session.key, pool_key(0, session.startup))  # type: ignore[arg-type]

    def test_node_up_after_a_login_and_kept_across_a_reload(self) -> None:
        """A finished login marks its node up; a reload that keeps the node keeps that status."""
        harness = Harness(backends=(NODE, BackendNode(1, "127.0.0.2", 5432)))
        session, _ = harness.session()
        session.client_data(startup_packet())
        self.assertEqual(harness.context.cluster[0].status, WAITING_STATUS)
        harness.server_for(session)
        self.assertEqual(harness.context.cluster[0].status, UP)
        harness.context.use(dataclasses.replace(harness.config, max_pool=2))
        self.assertEqual([node.status for node in harness.context.cluster], [UP, WAITING_STATUS])

    def test_no_backend_refuses_the_client(self) -> None:
        """With no backend node configured a client gets FATAL 08006, no connection attempt."""
        harness = Harness(backends=())
        session, io = harness.session()
        session.client_data(startup_packet())
        self.assertEqual(io.error_code(), "08006")
        self.assertEqual(harness.reactor.tcpClients, [])


class _Client:
    """What SessionContext reads of a client connection: its session."""

    def __init__(self, session: Session) -> None:
        self.session = session


class NodeDetachedTests(SynchronousTestCase):
    """What failover's detach of a node does to sessions and pooled servers."""

    def start(self, harness: Harness) -> tuple[Session, RecordingIO, BackendProtocol]:
        session, io = harness.session()
        session.client_data(startup_packet())
        server = harness.server_for(session)
        harness.context.clients.add(_Client(session))  # as FrontendProtocol does
        return session, io, server

    def test_a_session_on_the_node_ends_with_57p01_naming_it(self) -> None:
        harness = Harness()
        session, io, server = self.start(harness)
        harness.context.cluster.detach(0)
        harness.context.node_detached(0, "health check failed: unreachable")
        self.assertEqual(io.error_code(), "57P01")
        ((_, body),) = m.MessageReader().feed(io.sent[-1])
        text = m.parse_fields(body)["M"]
        self.assertEqual(
            text, "backend node 0 (127.0.0.1:5432) was detached: health check failed: unreachable"
        )
        self.assertEqual(io.actions[-2:], ["stop_relay", "close"])
        self.assertEqual(harness.pool.idle_count, 0)  # its server is closed, not pooled
        self.assertIsNone(server.transport.connected and server.keeper)  # type: ignore[union-attr]

    def test_a_session_on_another_node_carries_on(self) -> None:
        harness = Harness()
        session, io, _ = self.start(harness)
        sent = list(io.sent)
        harness.context.node_detached(1, "detached by request")
        self.assertEqual((io.sent, session.state), (sent, RELAY))

    def test_an_idle_server_of_the_node_is_closed_and_a_busy_one_never_pooled(self) -> None:
        harness = Harness()
        first, _, idle = self.start(harness)
        first.client_terminated()
        idle.dataReceived(m.ready_for_query(m.IDLE))  # DISCARD ALL done: pooled
        self.assertEqual(harness.pool.idle_count, 1)
        harness.context.cluster.detach(0)
        harness.context.node_detached(0, "detached by request")
        self.assertEqual(harness.pool.idle_count, 0)
        self.assertTrue(idle.stale)
        # A server that logged in before the change and comes back later is closed too.
        harness.context.cluster.attach(0)
        second, _, busy = self.start(harness)
        busy.stale = True  # what node_detached marks on every live server of the node
        second.client_terminated()
        busy.dataReceived(m.ready_for_query(m.IDLE))
        self.assertEqual(harness.pool.idle_count, 0)

    def test_a_waiting_session_for_the_node_is_refused(self) -> None:
        harness = Harness(num_init_children=1)
        self.start(harness)
        waiting, io = harness.session()
        waiting.client_data(startup_packet())
        harness.context.clients.add(_Client(waiting))
        self.assertEqual(waiting.state, WAITING)
        harness.context.cluster.detach(0)
        harness.context.node_detached(0, "detached by request")
        self.assertEqual(io.error_code(), "57P01")

    def test_roles_changed_ends_sessions_writing_elsewhere(self) -> None:
        other = BackendNode(1, "127.0.0.2", 5432)
        harness = Harness(backends=(NODE, other))
        _, io, _ = self.start(harness)
        harness.context.cluster.set_primary(1)
        harness.context.roles_changed(frozenset({0, 1}))
        self.assertEqual(io.error_code(), "57P01")
        ((_, body),) = m.MessageReader().feed(io.sent[-1])
        self.assertIn(
            "the primary is now backend node 1 (127.0.0.2:5432)", m.parse_fields(body)["M"]
        )

    def test_no_node_up_is_one_fatal_that_says_so(self) -> None:
        harness = Harness()
        harness.context.cluster.detach(0)
        session, io = harness.session()
        session.client_data(startup_packet())
        self.assertEqual(io.error_code(), "57P03")
        self.assertIn(b"no backend node is up", io.sent[-1])
        self.assertEqual(harness.reactor.tcpClients, [])


class TransactionModeTests(SynchronousTestCase):
    """pool_mode = transaction: a login's server belongs to the key's leases."""

    def login(self, harness: Harness, application: str) -> tuple[Session, RecordingIO]:
        session, io = harness.session()
        session.client_data(startup_packet(application=application))
        return session, io

    def test_the_logins_server_goes_back_to_the_leases_at_once(self) -> None:
        harness = Harness(pool_mode="transaction")
        session, io = self.login(harness, "a")
        harness.server_for(session)
        self.assertEqual(session.state, RELAY)
        ((key, stats),) = harness.pool.leases.stats().items()
        self.assertEqual((stats.active, stats.idle), (0, 1))
        self.assertEqual(harness.pool.idle_count, 0, "not the session pool's")
        pid = [m.parse_backend_key_data(b) for k, b in io.messages() if k == m.BACKEND_KEY_DATA]
        self.assertGreaterEqual(pid[0][0], 1 << 30, "the pooler's own pid")

    def test_a_client_gone_while_its_reused_server_sets_its_name(self) -> None:
        """The server goes back to the leases (not the session pool), counted once."""
        harness = Harness(pool_mode="transaction")
        first, _ = self.login(harness, "a")
        server = harness.server_for(first)
        second, _ = self.login(harness, "b")  # takes the idle server: SET application_name
        self.assertEqual(second.state, SETTING)
        second.client_lost()
        server.dataReceived(
            m.message(b"S", b"application_name\0b\0")
            + m.message(b"C", b"SET\0")
            + m.ready_for_query(m.IDLE)
        )
        ((key, stats),) = harness.pool.leases.stats().items()
        self.assertEqual((stats.active, stats.idle), (0, 1))
        self.assertEqual(harness.pool.idle_count, 0)
