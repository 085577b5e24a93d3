"""The console's PAUSE, RESUME, WAIT_CLOSE and SHUTDOWN WAIT_FOR_SERVERS against a real
pooler and PostgreSQL, through psql and a protocol-level client."""

from __future__ import annotations

import subprocess
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from pgpool_tw.session.machine import DRAIN_TEXT
from pgpool_tw_dev.devdb import client_env, pg_bin
from tests.integration.harness import PoolerTestCase, RawClient, error_fields, error_of, eventually
from tests.integration.test_console import console_pooler

Steps = Generator[Deferred[Any], Any, None]


class PauseTests(PoolerTestCase):
    def start(self, **settings: Any) -> PgpoolService:
        return console_pooler(self, **settings)

    def psql(self, service: PgpoolService, *commands: str) -> Deferred[str]:
        """psql on the console as admin_u; fires with its output once every command answered."""

        def run() -> str:
            argv = [pg_bin("psql"), "-X", "-h", "127.0.0.1", "-p", str(service.port)]
            argv += ["-U", "admin_u", "-d", "pgbouncer", "-At", "-v", "ON_ERROR_STOP=1"]
            for command in commands:
                argv += ["-c", command]
            out = subprocess.run(argv, env=client_env(), capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout

        return self.in_thread(run)

    def login(self, service: PgpoolService, user: str, db: str, *sql: str) -> RawClient:
        client = RawClient(service.port)
        answer = client.startup(user=user, database=db)
        assert not error_fields(answer), answer
        for text in sql:
            assert not error_fields(client.query(text)), text
        return client

    @inlineCallbacks
    def test_pause_waits_for_the_session_then_resume_lets_the_newcomer_in(self) -> Steps:
        """Session mode: PAUSE answers once the session holding a server leaves (its
        servers are closed); a login meanwhile waits, and RESUME lets it in."""
        service = self.start()
        user, db = self.role_and_db()
        worker = yield self.in_thread(self.login, service, user, db, "select 1")
        pausing = self.psql(service, f"PAUSE {db}")
        self.assertTrue((yield eventually(lambda: service.factory.pause.active)))
        late = self.in_thread(self.login, service, user, db, "select 2")
        self.assertTrue((yield eventually(lambda: service.factory.pause.waiting == 1)))
        self.assertFalse(pausing.called)  # the worker still holds its server
        yield self.in_thread(worker.close)
        yield pausing
        self.assertTrue((yield eventually(lambda: not self.server_pids(user))))
        self.assertFalse(late.called)
        yield self.psql(service, f"RESUME {db}")
        newcomer = yield late
        answer = yield self.in_thread(newcomer.query, "select 3")
        newcomer.close()
        self.assertFalse(error_fields(answer))
        self.assertFalse(service.factory.pause.active)

    @inlineCallbacks
    def test_transaction_mode_pause_holds_the_next_transaction(self) -> Steps:
        """Transaction mode: PAUSE answers when no transaction runs; the client's next
        query waits, connected, until RESUME."""
        service = self.start(pool_mode="transaction")
        user, db = self.role_and_db()
        worker = yield self.in_thread(self.login, service, user, db, "select 1")
        yield self.psql(service, "PAUSE")
        self.assertTrue((yield eventually(lambda: not self.server_pids(user))))
        held = self.in_thread(worker.query, "select 2")
        self.assertTrue((yield eventually(lambda: service.factory.pause.waiting == 1)))
        self.assertFalse(held.called)
        yield self.psql(service, "RESUME")
        answer = yield held
        worker.close()
        self.assertFalse(error_fields(answer))
        self.assertIn(ord("D"), [kind for kind, _ in answer])

    @inlineCallbacks
    def test_wait_close_waits_for_reconnected_servers(self) -> Steps:
        """WAIT_CLOSE after RECONNECT answers once the server a session held is closed."""
        service = self.start()
        user, db = self.role_and_db()
        worker = yield self.in_thread(self.login, service, user, db, "select 1")
        yield self.psql(service, f"RECONNECT {db}")
        waiting = self.psql(service, f"WAIT_CLOSE {db}")
        self.assertTrue((yield eventually(lambda: len(service._looks) == 1)))
        self.assertFalse(waiting.called)
        yield self.in_thread(worker.close)
        yield waiting
        self.assertTrue((yield eventually(lambda: not self.server_pids(user))))

    @inlineCallbacks
    def test_shutdown_wait_for_servers_drains(self) -> Steps:
        """SHUTDOWN WAIT_FOR_SERVERS: the idle client gets the drain's 57P01 and the
        pooler stops, closing the console last."""
        service = self.start()
        user, db = self.role_and_db()
        worker = yield self.in_thread(self.login, service, user, db, "select 1")
        console = RawClient(service.port)
        yield self.in_thread(console.startup, user="admin_u", database="pgbouncer")
        answer = yield self.in_thread(console.query, "SHUTDOWN WAIT_FOR_SERVERS")
        self.assertIn((ord("C"), b"SHUTDOWN\0"), answer)
        raw = yield self.in_thread(worker.read_all)
        worker.close(terminate=False)
        self.assertEqual(error_of(raw).get("C"), "57P01")
        self.assertEqual(error_of(raw).get("M"), DRAIN_TEXT)
        rest = yield self.in_thread(console.read_all)
        console.close(terminate=False)
        self.assertEqual(error_of(rest).get("C"), "57P01")  # the fast shutdown at the end
        self.assertTrue((yield eventually(lambda: not service.factory.clients)))
        self.assertEqual(service.shutting_down, "fast")
        self.assertNotIn(m.READY_FOR_QUERY, [k for k, _ in m.MessageReader().feed(rest)])
