"""The log options with a real PostgreSQL and real clients: log_disconnections (the
session's length and its exact bytes, in session and transaction mode, on Twisted's loop
and on the C loop, whose relay and transaction lane count in C), log_statement and
log_per_node_statement (the fast paths give way so every statement is seen), JSON lines
(each parses), and never a password in any line.

Each test adds its own observer to the global log publisher, so it sees exactly the
events the process logs.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Generator
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import formatEvent, globalLogPublisher

from pgpool_tw.logs.jsonlog import json_line, json_observer
from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from tests.integration.harness import PoolerTestCase, RawClient, eventually
from tests.integration.test_client_auth import (
    PASSWORD,
    WRONG,
    ClientAuthChecks,
    raw_login,
    refusal,
    session,
)
from tests.integration.test_routing import RoutingCase, on_the_c_loop
from tests.integration.test_transaction import SMALL_POOL

Steps = Generator[Deferred[Any], Any, None]

DISCONNECTION = re.compile(
    r"disconnection: session time: \d+:\d\d:\d\d\.\d{3} user=(\S+) database=(\S+) "
    r"host=127\.0\.0\.1 port=\d+ bytes_received=(\d+) bytes_sent=(\d+)\Z"
)


class Captured:
    """Every event the process logs while a test runs."""

    def __init__(self, case: Any) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def starting(self, prefix: str) -> list[dict[str, Any]]:
        return [e for e in self.events if str(e.get("log_format", "")).startswith(prefix)]

    def disconnections(self, user: str) -> list[dict[str, Any]]:
        return [e for e in self.starting("disconnection:") if e.get("user") == user]

    def statements(self, user_text: str) -> list[str]:
        """Formatted statement lines (both kinds) whose text holds ``user_text``."""
        lines = []
        for event in self.events:
            text = str(event.get("statement", ""))
            if "statement:" in str(event.get("log_format", "")) and user_text in text:
                lines.append(formatEvent(event))
        return lines


class CountingClient(RawClient):
    """The raw client, counting every byte it receives (the pooler's ``bytes_sent``)."""

    received = 0

    def read_messages(self) -> list[tuple[int, bytes]]:
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the pooler")
            self.received += len(data)
            out = self.reader.feed(data)
            if out:
                return out


QUERIES = ["select 1", "select repeat('x', 100000)", "begin", "select 2", "commit", "select 3"]


def _session_bytes(service: PgpoolService, user: str, db: str, snapshot: bool) -> tuple[int, int]:
    """Run QUERIES on one session (taking a stats snapshot half way when asked, which
    harvests the trackers mid-session); return (bytes sent to the pooler after the login,
    bytes received from it after the login)."""
    client = CountingClient(service.port)
    client.startup(user=user, database=db)
    login = client.received
    for number, sql in enumerate(QUERIES):
        client.query(sql)
        if snapshot and number == 2:
            blockingCallFromThread(reactor, service.snapshot)
    received = client.received - login
    client.close()
    return sum(len(m.query(sql)) for sql in QUERIES) + len(m.terminate()), received


class DisconnectionTests(PoolerTestCase):
    @inlineCallbacks
    def check_bytes(self, snapshot: bool, **settings: Any) -> Steps:
        captured = Captured(self)
        service = self.start_pooler(log_disconnections=True, **settings)
        user, db = self.role_and_db()
        sent, received = yield self.in_thread(_session_bytes, service, user, db, snapshot)
        ok = yield eventually(lambda: bool(captured.disconnections(user)))
        self.assertTrue(ok, "no disconnection line")
        [event] = captured.disconnections(user)
        match = DISCONNECTION.match(formatEvent(event))
        self.assertIsNotNone(match, formatEvent(event))
        assert match is not None
        self.assertEqual(match.groups(), (user, db, str(sent), str(received)))
        self.assertEqual((event["bytes_received"], event["bytes_sent"]), (sent, received))
        return service

    def test_session_mode_bytes_are_the_clients(self) -> Any:
        """One line per session in PostgreSQL's shape, with exactly the bytes the client
        sent after its login (Terminate included) and received after it."""
        return self.check_bytes(False)

    def test_a_snapshot_mid_session_loses_nothing(self) -> Any:
        """A stats snapshot harvests the tracker half way; the line still has every byte."""
        return self.check_bytes(True)

    def test_transaction_mode_bytes_are_the_clients(self) -> Any:
        """Transaction pooling (servers borrowed per transaction): the same exact bytes."""
        return self.check_bytes(True, **SMALL_POOL)

    @inlineCallbacks
    def test_refused_login_logs_its_end_too(self) -> Steps:
        """A session refused at login (a database that does not exist) is logged with no
        bytes relayed."""
        captured = Captured(self)
        service = self.start_pooler(log_disconnections=True)
        user, _ = self.role_and_db()

        def run() -> None:
            client = RawClient(service.port)
            client.startup(user=user, database="no_such_db")
            client.close(terminate=False)

        yield self.in_thread(run)
        ok = yield eventually(lambda: bool(captured.disconnections(user)))
        self.assertTrue(ok, "no disconnection line")
        event = captured.disconnections(user)[0]
        self.assertEqual((event["bytes_received"], event["bytes_sent"]), (0, 0))
        self.assertEqual(event["database"], "no_such_db")

    @inlineCallbacks
    def test_off_logs_nothing(self) -> Steps:
        """With log_disconnections off (the default) no such line is written."""
        captured = Captured(self)
        service = self.start_pooler()
        user, db = self.role_and_db()
        yield self.in_thread(_session_bytes, service, user, db, False)
        ok = yield eventually(lambda: service.pool.idle_count == 1)
        self.assertTrue(ok)
        self.assertEqual(captured.starting("disconnection:"), [])


class CLoopDisconnectionTests(DisconnectionTests):
    """The same on the C loop: the C relay and the transaction lane count the bytes."""

    c_loop = True

    @inlineCallbacks
    def test_the_c_relay_and_the_lane_still_run(self) -> Steps:
        """log_disconnections keeps the fast paths: the session is on the C relay, and a
        transaction-mode session's simple statements run on the lane, counted exactly."""
        service = self.start_pooler(log_disconnections=True)
        user, db = self.role_and_db()

        def relayed() -> bool:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("select 1")
                return bool(
                    blockingCallFromThread(
                        reactor,
                        lambda: [c for c in service.factory.clients if c._relay is not None],
                    )
                )

        self.assertTrue((yield self.in_thread(relayed)))
        warm = service.factory.warm
        assert warm is not None
        self.assertFalse(warm.usable(), "a warm login's end is C's alone: not while logged")
        lane_service = yield self.check_bytes(False, **SMALL_POOL)
        hits = sum(lane.counts[0] for lane in lane_service.pool.leases.lanes.values())
        self.assertGreater(hits, 0)


class StatementTests(PoolerTestCase):
    c_loop = True

    @inlineCallbacks
    def test_session_mode_logs_every_statement_with_its_node(self) -> Steps:
        """On the C loop, a session that logs statements is read by Python: simple and
        extended statements are logged once each ("statement: ...") and per node with the
        server's pid; a newline in a statement is escaped, never a line of its own."""
        captured = Captured(self)
        service = self.start_pooler(log_statement=True, log_per_node_statement=True)
        user, db = self.role_and_db()

        def run() -> tuple[int, bool]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.query("select 'simple-1'")
            client.query("select 'two\nlines'")
            on_c = blockingCallFromThread(
                reactor, lambda: any(c._relay is not None for c in service.factory.clients)
            )
            client.close()
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("select %s::text as extended_1", ("v",))
            return client.pid, on_c

        pid, on_c = yield self.in_thread(run)
        self.assertFalse(on_c, "a session that logs statements was on the C relay")
        self.assertEqual(
            captured.statements("simple-1"),
            [
                "statement: select 'simple-1'",
                f"DB node id: 0 backend pid: {pid} statement: select 'simple-1'",
            ],
        )
        two = captured.statements("two")
        self.assertEqual(two[0], "statement: select 'two\\nlines'")
        self.assertTrue(all("\n" not in line for line in captured.lines()))
        extended = captured.statements("extended_1")
        self.assertEqual(len(extended), 2, extended)
        self.assertIn("select $1::text as extended_1", extended[0])

    @inlineCallbacks
    def test_transaction_mode_logs_every_statement(self) -> Steps:
        """Transaction pooling on the C loop: the lane gives way, each statement is logged
        with the node and pid of the server that ran it."""
        captured = Captured(self)
        service = self.start_pooler(log_per_node_statement=True, **SMALL_POOL)
        user, db = self.role_and_db()

        def run() -> list[str]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            pids = []
            for i in range(20):
                answer = client.query(f"select pg_backend_pid(), 'tx-{i}'")
                pids.extend(
                    body[6:].split(b"\0")[0].decode() for kind, body in answer if kind == ord("D")
                )
            client.close()
            return pids

        pids = yield self.in_thread(run)
        self.assertEqual(len(pids), 20)
        for i in range(20):
            lines = captured.statements(f"'tx-{i}'")
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith("DB node id: 0 backend pid: "), lines)
        hits = sum(lane.counts[0] for lane in service.pool.leases.lanes.values())
        self.assertEqual(hits, 0)


class RoutedStatementTests(RoutingCase):
    """A routed session (primary and standby) on the C loop: its router gives way."""

    def setUp(self) -> None:
        super().setUp()
        on_the_c_loop(self)

    @inlineCallbacks
    def test_each_statement_once_and_per_node(self) -> Steps:
        """Every repeat of a read is logged (the C router routes none of them); a SET,
        sent to both nodes, is one "statement:" line and one line per node."""
        captured = Captured(self)
        service = self.start_pooler(
            log_statement=True, log_per_node_statement=True, log_disconnections=True
        )
        user, db = self.database()

        def work() -> None:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                for _ in range(5):
                    conn.execute("select 'routed-read'")
                conn.execute("set work_mem = '5MB'")
                conn.execute("select 'routed-read-after-set'")

        yield self.in_thread(work)
        plain = [line for line in captured.statements("routed-read'") if line.startswith("s")]
        self.assertEqual(plain, ["statement: select 'routed-read'"] * 5)
        per_node = [line for line in captured.statements("routed-read'") if line[0] == "D"]
        self.assertEqual(len(per_node), 5)
        self.assertTrue(all(line.startswith("DB node id: 1 ") for line in per_node), per_node)
        sets = captured.statements("work_mem")
        self.assertEqual(sets[0], "statement: set work_mem = '5MB'")
        self.assertEqual(sorted(line[:13] for line in sets[1:]), ["DB node id: 0", "DB node id: 1"])
        ok = yield eventually(lambda: bool(captured.disconnections(user)))
        self.assertTrue(ok, "no disconnection line")
        [end] = captured.disconnections(user)
        self.assertGreater(end["bytes_received"], 0)
        self.assertGreater(end["bytes_sent"], 0)

    def in_thread(self, fn: Any, *args: Any) -> Deferred[Any]:
        from twisted.internet import threads

        return threads.deferToThread(fn, *args)


class JsonTests(PoolerTestCase):
    @inlineCallbacks
    def test_every_line_is_json_with_the_sessions_fields(self) -> Steps:
        """json_observer on the live process: each line parses, and the connection and
        disconnection lines carry client, user, database and bytes as fields."""
        out = io.StringIO()
        observer = json_observer(out)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        service = self.start_pooler(
            log_connections=True, log_disconnections=True, log_statement=True
        )
        user, db = self.role_and_db()
        sent, received = yield self.in_thread(_session_bytes, service, user, db, False)
        ok = yield eventually(lambda: '"disconnection: ' in out.getvalue())
        self.assertTrue(ok)
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertTrue(records)
        for record in records:
            self.assertTrue({"timestamp", "level", "namespace", "message"} <= set(record))
        [end] = [r for r in records if r["message"].startswith("disconnection:")]
        self.assertEqual((end["user"], end["database"]), (user, db))
        self.assertEqual((end["bytes_received"], end["bytes_sent"]), (sent, received))
        self.assertEqual(end["level"], "info")
        self.assertEqual(end["namespace"], "pgpool_tw.session.logs")
        [start] = [r for r in records if "connected: user=" in r["message"]]
        self.assertEqual(start["client"], end["client"])
        self.assertTrue(any(r.get("statement") == "select 1" for r in records))


class NoPasswordTests(PoolerTestCase):
    """Logins with right and wrong passwords, every log option on: no log line, as text
    or as JSON, holds the password."""

    auth_method = "scram-sha-256"
    # The auth tests' helpers, not their tests.
    temp_dir = ClientAuthChecks.temp_dir
    write_files = ClientAuthChecks.write_files
    hba_pooler = ClientAuthChecks.hba_pooler
    server_secret = ClientAuthChecks.server_secret
    entry = ClientAuthChecks.entry

    def everything(self) -> dict[str, Any]:
        return {
            "log_connections": True,
            "log_disconnections": True,
            "log_statement": True,
            "log_per_node_statement": True,
        }

    def assert_never_logged(self, captured: Captured) -> None:
        lines = captured.lines() + [json_line(event) for event in captured.events]
        self.assertTrue(lines)
        for secret in (PASSWORD, WRONG, json.dumps(PASSWORD)[1:-1], json.dumps(WRONG)[1:-1]):
            self.assertEqual([line for line in lines if secret in line], [])

    @inlineCallbacks
    def test_pool_hba_md5_and_scram(self) -> Steps:
        """The pooler checks the password (md5 rule, scram-sha-256 rule): never logged."""
        captured = Captured(self)
        md5_user, db = self.role_and_db(password=PASSWORD)
        scram_user, scram_db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [
                f"host all {md5_user} 127.0.0.1/32 md5",
                f"host all {scram_user} 127.0.0.1/32 scram-sha-256",
            ],
            [self.entry("text", md5_user), self.entry("text", scram_user)],
            **self.everything(),
        )
        port = service.port
        for user, database in ((md5_user, db), (scram_user, scram_db)):
            wrong = yield self.in_thread(raw_login, port, user, database, WRONG)
            self.assertEqual(wrong.error.get("C"), "28P01", wrong)
            text = yield self.in_thread(refusal, port, user, database, WRONG)
            self.assertIn("password authentication failed", text)
            pid = yield self.in_thread(session, port, user, database, PASSWORD)
            self.assertTrue(pid)
        ok = yield eventually(lambda: len(captured.starting("disconnection:")) >= 6)
        self.assertTrue(ok, captured.lines())
        self.assert_never_logged(captured)

    @inlineCallbacks
    def test_pass_through(self) -> Steps:
        """Without enable_pool_hba the server's SCRAM exchange is relayed: never logged."""
        captured = Captured(self)
        user, db = self.role_and_db(password=PASSWORD)
        service = self.start_pooler(**self.everything())
        wrong = yield self.in_thread(raw_login, service.port, user, db, WRONG)
        self.assertEqual(wrong.error.get("C"), "28P01", wrong)
        pid = yield self.in_thread(session, service.port, user, db, PASSWORD)
        self.assertTrue(pid)
        ok = yield eventually(lambda: len(captured.disconnections(user)) >= 2)
        self.assertTrue(ok, captured.lines())
        self.assert_never_logged(captured)
