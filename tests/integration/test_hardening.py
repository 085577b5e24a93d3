"""Slow attackers and stalled servers against a real PostgreSQL (issue #20).

Clients that never finish their login hold nothing a real client waits for, are capped
(the oldest closed first) and timed out from their accept, on Twisted's path and on the C
loop; a server that takes the connection but not the login is named to the client within
connect_timeout.  Blocking sockets and psycopg run in threads; the reactor serves them.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Generator
from typing import Any

import psycopg
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher

from pgpool_tw.config.health import HealthCheckSettings
from pgpool_tw.config.settings import BackendNode
from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from pgpool_tw_dev.devdb import TempPostgres
from tests.integration.harness import (
    PoolerTestCase,
    RawClient,
    error_fields,
    error_of,
    eventually,
    recv_until_closed,
    sleep,
)

Steps = Generator[Deferred[Any], Any, None]
PASSWORD = "s3cret"


def _one(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn, connect_timeout=60) as conn:
        return conn.execute(sql).fetchone()[0]  # type: ignore[index]


def _stall(port: int, user: str, db: str) -> RawClient:
    """A login that reads the server's password request and never answers it."""
    client = RawClient(port)
    body = m.INT32.pack(196608) + m.cstring("user") + m.cstring(user)
    body += m.cstring("database") + m.cstring(db) + b"\0"
    client.send(m.UINT32.pack(len(body) + 4) + body)
    (kind, auth), *_ = client.read_messages()
    assert kind == m.AUTHENTICATION and m.INT32.unpack(auth[:4])[0] in (5, 10), (kind, auth)
    return client


def _silent(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


class Captured:
    def __init__(self, case: Any) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def having(self, text: str) -> list[str]:
        lines = [formatEvent(e) for e in self.events]
        return [line for line in lines if text in line]


class PreAuthTests(PoolerTestCase):
    """Logins in progress, without pool_hba: PostgreSQL asks the password (md5)."""

    auth_method = "md5"

    @inlineCallbacks
    def test_logins_waiting_on_the_client_hold_no_slot(self) -> Steps:
        """Defect 1: twice num_init_children logins that never answer the password leave
        every slot free, and a real client logs in at once."""
        service = self.start_pooler(num_init_children=2, authentication_timeout=60)
        user, db = self.role_and_db(password=PASSWORD)
        stalled = []
        for _ in range(4):
            stalled.append((yield self.in_thread(_stall, service.port, user, db)))
        self.assertEqual(service.pool.free_slots(), 2)
        self.assertEqual(len(service.factory.preauth), 4)
        for _ in range(3):
            one = yield self.in_thread(
                _one, self.dsn(service, user, db, password=PASSWORD), "select 1"
            )
            self.assertEqual(one, 1)
        self.assertEqual(len(service.factory.preauth), 4)
        for client in stalled:
            client.close(terminate=False)
        self.assertTrue((yield eventually(lambda: len(service.factory.preauth) == 0)))

    @inlineCallbacks
    def test_past_the_cap_the_oldest_unauthenticated_go_first(self) -> Steps:
        """max_preauth_clients = 3: silent sockets and stalled logins over it are closed
        oldest first, and a real client still gets in."""
        service = self.start_pooler(max_preauth_clients=3)
        user, db = self.role_and_db(password=PASSWORD)
        silent = []
        for count in range(1, 4):
            silent.append((yield self.in_thread(_silent, service.port)))
            self.assertTrue(
                (
                    yield eventually(lambda n=count: len(service.factory.preauth) == n)  # type: ignore[misc]
                )
            )
        stalled = yield self.in_thread(_stall, service.port, user, db)  # the 4th: 1st goes
        got = yield self.in_thread(recv_until_closed, silent[0])
        self.assertIn(error_of(got).get("C"), (None, "53300"))  # C loop: closed silently
        one = yield self.in_thread(_one, self.dsn(service, user, db, password=PASSWORD), "select 1")
        self.assertEqual(one, 1)
        got = yield self.in_thread(recv_until_closed, silent[1])  # the real one's login
        self.assertIn(error_of(got).get("C"), (None, "53300"))
        self.assertEqual(service.factory.preauth.shed, 2)
        self.assertEqual(len(service.factory.preauth), 2)  # silent[2] and the stalled login
        for skt in silent:
            skt.close()
        stalled.close(terminate=False)

    @inlineCallbacks
    def test_authentication_timeout_names_the_client_and_its_stage(self) -> Steps:
        """Defects 2-3: a silent socket, half a startup packet and an unanswered password
        are closed at authentication_timeout, logged with their address and stage; the
        one past its startup packet is told why (57014)."""
        captured = Captured(self)
        service = self.start_pooler(authentication_timeout=1)
        user, db = self.role_and_db(password=PASSWORD)
        silent = yield self.in_thread(_silent, service.port)
        ends = yield self.in_thread(recv_until_closed, silent)
        self.assertEqual(ends, b"")
        half = yield self.in_thread(_silent, service.port)
        half.sendall(b"\0\0\0\x50\0\x03")
        ends = yield self.in_thread(recv_until_closed, half)
        self.assertEqual(ends, b"")
        stalled = yield self.in_thread(_stall, service.port, user, db)
        ends = yield self.in_thread(recv_until_closed, stalled.sock)
        self.assertEqual(error_of(ends).get("C"), "57014")
        self.assertEqual(service.factory.preauth.timed_out_total, 3)
        self.assertEqual(service.snapshot().preauth["timed_out"], 3)  # metrics' source
        lines = captured.having("authentication_timeout (1s) reached")
        self.assertTrue(lines)
        stages = " ".join(lines)
        self.assertIn(f"client=127.0.0.1:{silent.getsockname()[1]} ", stages)
        self.assertIn("the startup packet (nothing received)", stages)
        self.assertTrue(len(lines) == 3 or "more since the last" in stages, lines)
        for skt in (silent, half):
            skt.close()
        stalled.close(terminate=False)

    @inlineCallbacks
    def test_failed_logins_are_logged_once_a_second_with_the_name_escaped(self) -> Steps:
        """Log hygiene: wrong passwords (a user name with a newline among them) make one
        line a second, with a count, and never a line break from the client."""
        captured = Captured(self)
        service = self.start_pooler()
        user, db = self.role_and_db(password=PASSWORD)
        for _ in range(5):
            yield self.assertFailure(
                self.in_thread(_one, self.dsn(service, user, db, password="wrong"), "select 1"),
                psycopg.OperationalError,
            )
        lines = captured.having("authentication failed")
        self.assertGreaterEqual(len(lines), 1)
        self.assertLess(len(lines), 5)
        yield sleep(1.1)  # the next failure is the next second's first: it is logged
        evil = yield self.in_thread(_stall, service.port, f"{user}\nFAKE LINE", db)
        evil.send(m.message(b"p", b"md5" + b"0" * 32 + b"\0"))  # a wrong md5 answer
        yield self.in_thread(evil.read_all)
        (line,) = captured.having("FAKE LINE")
        self.assertIn(f"{user}\\nFAKE LINE", line)
        self.assertIn(" more since the last)", line)


def _startup(user: str, db: str) -> bytes:
    body = m.INT32.pack(196608) + m.cstring("user") + m.cstring(user)
    body += m.cstring("database") + m.cstring(db) + b"\0"
    return m.UINT32.pack(len(body) + 4) + body


class CLoopPreAuthTests(PreAuthTests):
    """The same through the C loop: silent clients wait in the warm lane's accept buffer."""

    c_loop = True


class StalledServerTests(PoolerTestCase):
    """Defect 2: a postmaster stopped by SIGSTOP takes connections but answers no login."""

    timeout = 180

    def setUp(self) -> None:
        super().setUp()
        self.stopped = TempPostgres().start()
        self.addCleanup(self.stopped.stop)

    def _pooler(self) -> PgpoolService:
        pg = self.stopped
        return self.start_pooler(
            backends=(BackendNode(0, "127.0.0.1", pg.port),),
            health_check=HealthCheckSettings(connect_timeout=0.5),
            authentication_timeout=30,
        )

    @inlineCallbacks
    def test_a_silent_server_is_named_to_the_client_within_connect_timeout(self) -> Steps:
        captured = Captured(self)
        service = self._pooler()
        pid = self.stopped.pid
        assert pid is not None
        dsn = self.dsn(service, "postgres", "postgres")
        self.assertEqual((yield self.in_thread(_one, dsn, "select 1")), 1)
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(os.kill, pid, signal.SIGCONT)
        client = yield self.in_thread(RawClient, service.port)  # a new server login
        answer = yield self.in_thread(client.startup, user="postgres", database="postgres")
        fields = error_fields(answer)
        address = f"127.0.0.1:{self.stopped.port}"
        self.assertEqual(fields.get("C"), "57P03")
        self.assertIn(f'"{address}"', fields.get("M", ""))
        (line,) = captured.having("did not answer the login within connect_timeout")
        self.assertIn(f"server={address} ", line)
        client.close(terminate=False)
        os.kill(pid, signal.SIGCONT)
        self.assertEqual((yield self.in_thread(_one, dsn, "select 1")), 1)  # recovered


class ServerGoneTests(PoolerTestCase):
    """A server that ends an idle session says why itself: the pooler adds nothing."""

    @inlineCallbacks
    def test_an_idle_clients_server_fatal_is_the_only_error(self) -> Steps:
        service = self.start_pooler()
        user, db = self.role_and_db()
        client = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(client.startup, user=user, database=db)
        self.pg.psql(f"select pg_terminate_backend({client.pid})")
        rest = yield self.in_thread(client.read_all)
        errors = [
            m.parse_fields(body)
            for kind, body in m.MessageReader().feed(rest)
            if kind == m.ERROR_RESPONSE
        ]
        self.assertEqual([fields.get("C") for fields in errors], ["57P01"])
        client.close(terminate=False)


class CLoopServerGoneTests(ServerGoneTests):
    c_loop = True


class FullServerTests(PoolerTestCase):
    """A PostgreSQL whose connections are all held by logins that never answer their
    password: a real client still gets in, and the longest stalled login gives way."""

    timeout = 180

    def setUp(self) -> None:
        super().setUp()
        # Five connections, refused before authentication when taken ("too many clients").
        self.small = TempPostgres(
            "md5", settings={"max_connections": "5", "superuser_reserved_connections": "0"}
        ).start()
        self.addCleanup(self.small.stop)

    @inlineCallbacks
    def test_a_real_client_gets_in_past_a_flood_of_stalled_logins(self) -> Steps:
        small = self.small
        user, db = "flood_user", "flood_db"
        small.create_role(user, PASSWORD)
        small.create_database(db, owner=user)
        service = self.start_pooler(backends=(BackendNode(0, "127.0.0.1", small.port),))
        stalled = []
        for _ in range(5):
            stalled.append((yield self.in_thread(_stall, service.port, user, db)))
        yield sleep(0.5)  # past STALL_GRACE: they are stalled, not answering
        dsn = self.dsn(service, user, db, password=PASSWORD)
        self.assertEqual((yield self.in_thread(_one, dsn, "select 1")), 1)
        first = yield self.in_thread(stalled[0].read_all)
        self.assertEqual(error_of(first).get("C"), "53300")
        self.assertEqual(service.factory.preauth.evicted_total, 1)
        for client in stalled:
            client.close(terminate=False)
