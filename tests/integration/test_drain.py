"""A drain (SIGUSR2, the console's SHUTDOWN WAIT_FOR_SERVERS) against a real PostgreSQL:
each client ends with FATAL 57P01 at its next transaction boundary, the service stops
when the last one is gone, and drain_timeout forces a fast shutdown."""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import threads
from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.listeners import ListenError
from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from pgpool_tw.session.machine import DRAIN_TEXT
from tests.integration.harness import (
    PoolerTestCase,
    RawClient,
    error_fields,
    error_of,
    eventually,
    sleep,
)
from tests.integration.test_routing import RoutingCase, on_the_c_loop

Steps = Generator[Deferred[Any], Any, None]


def until_closed(client: RawClient, sql: str) -> list[tuple[int, bytes]]:
    """Send ``sql`` and read every message until the pooler closes."""
    client.send(m.query(sql))
    return client.reader.feed(client.read_all())


def after_ready(messages: list[tuple[int, bytes]]) -> tuple[list[int], dict[str, str]]:
    """The message types up to the last ReadyForQuery, and the error that follows it."""
    kinds = [kind for kind, _ in messages]
    last = (
        len(kinds) - 1 - kinds[::-1].index(m.READY_FOR_QUERY) if m.READY_FOR_QUERY in kinds else -1
    )
    return kinds[: last + 1], error_fields(messages[last + 1 :])


class DrainTests(PoolerTestCase):
    pool_mode = "session"

    def start(self, **settings: Any) -> PgpoolService:
        return self.start_pooler(pool_mode=self.pool_mode, **settings)

    def ready(self, service: PgpoolService, user: str, db: str, *sql: str) -> RawClient:
        client = RawClient(service.port)
        client.startup(user=user, database=db)
        for text in sql:
            self.assertFalse(error_fields(client.query(text)), text)
        return client

    @inlineCallbacks
    def test_an_idle_client_is_told_at_once_and_the_service_stops(self) -> Steps:
        """An idle client gets FATAL 57P01 naming the drain; the last one gone, it stops."""
        service = self.start()
        user, db = self.role_and_db()
        client = yield self.in_thread(self.ready, service, user, db, "select 1")
        stopped = service.drain()
        raw = yield self.in_thread(client.read_all)
        client.close(terminate=False)
        fields = error_of(raw)
        self.assertEqual(fields.get("C"), "57P01", raw)
        self.assertEqual(fields.get("S"), "FATAL")
        self.assertEqual(fields.get("M"), DRAIN_TEXT)
        self.assertTrue((yield eventually(lambda: stopped.called)))

    @inlineCallbacks
    def test_a_transaction_finishes_then_the_client_is_told(self) -> Steps:
        """A client in a transaction commits it (COMMIT succeeds), then gets 57P01."""
        service = self.start()
        user, db = self.role_and_db()

        def begin() -> RawClient:
            client = self.ready(service, user, db, "create table t (x int)", "begin")
            self.assertEqual(client.status, m.IN_TRANSACTION)
            return client

        client = yield self.in_thread(begin)
        stopped = service.drain()
        # No listener now: a new client is refused by the kernel.
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", service.port), timeout=5).close()

        def finish() -> tuple[list[Any], list[Any]]:
            inserted = client.query("insert into t values (1)")
            return inserted, until_closed(client, "commit")

        inserted, committed = yield self.in_thread(finish)
        client.close(terminate=False)
        self.assertFalse(error_fields(inserted))
        answered, fatal = after_ready(committed)
        self.assertIn(ord("C"), answered)
        self.assertFalse(error_fields(committed[: len(answered)]))  # COMMIT succeeded
        self.assertEqual(committed[len(answered) - 1][1], bytes([m.IDLE]))
        self.assertEqual(fatal.get("C"), "57P01", committed)
        self.assertTrue((yield eventually(lambda: stopped.called)))
        self.assertEqual(self.pg.psql("select count(*) from t", dbname=db).strip(), "1")

    @inlineCallbacks
    def test_a_client_that_has_not_spoken_runs_its_first_statement(self) -> Steps:
        """A client drained right after its login gets its first answer, then 57P01."""
        service = self.start()
        user, db = self.role_and_db()
        client = yield self.in_thread(self.ready, service, user, db)
        stopped = service.drain()
        answer = yield self.in_thread(until_closed, client, "select 42")
        client.close(terminate=False)
        answered, fatal = after_ready(answer)
        self.assertIn(ord("D"), answered)
        self.assertFalse(error_fields(answer[: len(answered)]))
        self.assertEqual(fatal.get("C"), "57P01", answer)
        self.assertTrue((yield eventually(lambda: stopped.called)))

    @inlineCallbacks
    def test_drain_timeout_shuts_down_fast(self) -> Steps:
        """A transaction still open at drain_timeout is cut by a fast shutdown."""
        service = self.start(drain_timeout=0.3)
        user, db = self.role_and_db()
        client = yield self.in_thread(self.ready, service, user, db, "select 1", "begin")
        stopped = service.drain()
        raw = yield self.in_thread(client.read_all)
        client.close(terminate=False)
        fields = error_of(raw)
        self.assertEqual(fields.get("C"), "57P01", raw)
        self.assertNotEqual(fields.get("M"), DRAIN_TEXT)  # the fast shutdown's words
        self.assertTrue((yield eventually(lambda: stopped.called)))
        self.assertEqual(service.shutting_down, "fast")


class ReusePortTests(PoolerTestCase):
    def test_two_poolers_share_a_port_with_so_reuseport(self) -> None:
        """so_reuseport lets a second pooler bind the first one's port; without it, the
        second fails to start with a line naming the address."""
        first = self.start_pooler(so_reuseport=True)
        second = self.start_pooler(so_reuseport=True, port=first.port)
        self.assertEqual(second.port, first.port)
        with self.assertRaises(ListenError) as caught:
            self.start_pooler(port=first.port)
        self.assertIn(f"127.0.0.1:{first.port}", str(caught.exception))

    @inlineCallbacks
    def test_the_second_pooler_serves_once_the_first_drained(self) -> Steps:
        """After the first pooler drains, logins on the shared port reach the second."""
        first = self.start_pooler(so_reuseport=True)
        second = self.start_pooler(so_reuseport=True, port=first.port)
        user, db = self.role_and_db()
        port = first.port
        yield first.drain()
        client = yield self.in_thread(RawClient, port)
        answer = yield self.in_thread(client.startup, user=user, database=db)
        self.assertFalse(error_fields(answer))
        self.assertEqual(len(second.factory.clients), 1)
        yield self.in_thread(client.close)


class WarmDrainTests(PoolerTestCase):
    """Sessions the C lane logged in (warm logins) are handed to Python and drained."""

    c_loop = True

    @inlineCallbacks
    def test_warm_sessions_are_drained(self) -> Steps:
        """A warm session that spoke ends at once; a fresh one after its first answer."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        warm = service.factory.warm
        self.assertIsNotNone(warm, "the C loop runs, so the service must have a warm lane")
        assert warm is not None
        lane = warm.lane  # type: ignore[attr-defined]
        for _ in range(2):  # Python learns the login, then lends its server to the lane
            client = yield self.in_thread(RawClient, service.port)
            yield self.in_thread(client.startup, user=user, database=db)
            yield self.in_thread(client.close)
            self.assertTrue((yield eventually(lambda: service.pool.idle_count >= 1)))
            yield sleep(0.1)
        hits = lane.hits

        def two() -> tuple[RawClient, RawClient]:
            spoke = RawClient(service.port)
            spoke.startup(user=user, database=db)
            self.assertFalse(error_fields(spoke.query("select 1")))
            fresh = RawClient(service.port)
            fresh.startup(user=user, database=db)
            return spoke, fresh

        # Two servers parked for the two: the second login of each key lends one.
        spoke, fresh = yield self.in_thread(two)
        self.assertEqual(lane.hits, hits + 1)  # the first is the lane's (one server parked)
        stopped = service.drain()
        raw = yield self.in_thread(spoke.read_all)
        spoke.close(terminate=False)
        self.assertEqual(error_of(raw).get("M"), DRAIN_TEXT, raw)
        answer = yield self.in_thread(until_closed, fresh, "select 2")
        fresh.close(terminate=False)
        answered, fatal = after_ready(answer)
        self.assertIn(ord("D"), answered)
        self.assertEqual(fatal.get("C"), "57P01", answer)
        self.assertTrue((yield eventually(lambda: stopped.called)))


class TransactionDrainTests(DrainTests):
    pool_mode = "transaction"


class CLoopDrainTests(DrainTests):
    c_loop = True


class CLoopTransactionDrainTests(DrainTests):
    c_loop = True
    pool_mode = "transaction"


class RoutedDrainTests(RoutingCase):
    """Routed sessions (a primary and a streaming replica): the stream's idle
    ReadyForQuery is the boundary."""

    c_loop = False

    def setUp(self) -> None:
        super().setUp()
        if self.c_loop:
            on_the_c_loop(self)

    @inlineCallbacks
    def test_routed_sessions_end_at_their_boundaries(self) -> Steps:
        """An idle routed client ends at once; one in a transaction commits first."""
        service = self.start_pooler()
        user, db = self.database()

        def clients() -> tuple[RawClient, RawClient]:
            idle = RawClient(service.port)
            idle.startup(user=user, database=db)
            for _ in range(3):  # the router learns the shape, then takes it
                self.assertFalse(error_fields(idle.query("select 1")))
            busy = RawClient(service.port)
            busy.startup(user=user, database=db)
            self.assertFalse(error_fields(busy.query("select 1")))
            self.assertFalse(error_fields(busy.query("begin")))
            return idle, busy

        idle, busy = yield self.in_thread(clients)
        stopped = service.drain()
        raw = yield self.in_thread(idle.read_all)
        idle.close(terminate=False)
        self.assertEqual(error_of(raw).get("M"), DRAIN_TEXT, raw)
        self.assertEqual(busy.status, m.IN_TRANSACTION)
        answer = yield self.in_thread(until_closed, busy, "commit")
        busy.close(terminate=False)
        answered, fatal = after_ready(answer)
        self.assertFalse(error_fields(answer[: len(answered)]))
        self.assertEqual(fatal.get("C"), "57P01", answer)
        self.assertTrue((yield eventually(lambda: stopped.called)))

    def in_thread(self, fn: Any, *args: Any) -> Deferred[Any]:
        return threads.deferToThread(fn, *args)


class CLoopRoutedDrainTests(RoutedDrainTests):
    c_loop = True
