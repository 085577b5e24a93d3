"""The stats snapshot over real sessions: on Twisted's path and on the C loop's warm lane.

Clients are the harness's ``RawClient`` (every byte it sends is known, and
every message it reads is kept) and psycopg; the server is the shared throwaway
PostgreSQL.  Each test checks the snapshot's counts against what the clients
really did, so a counter that is never harvested, counted twice, or counted on
one path only fails here.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import psycopg
from twisted.internet import defer

from pgpool_tw.admin.snapshot import PoolStats
from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from tests.integration.harness import PoolerTestCase, RawClient, eventually, sleep

#: The statements of one session: two transactions (an autocommit one and BEGIN..COMMIT).
STATEMENTS = ("select 1", "begin", "select 2", "commit")
QUERIES, XACTS = len(STATEMENTS), 2


def wire_size(messages: list[tuple[int, bytes]]) -> int:
    return sum(5 + len(body) for _, body in messages)


class Session:
    """One RawClient session; what it sent and read after its login, in bytes."""

    def __init__(self, port: int, user: str, db: str) -> None:
        self.client = RawClient(port)
        self.client.startup(user=user, database=db)
        self.sent = 0
        self.read = 0

    def run(self, statements: tuple[str, ...] = STATEMENTS) -> None:
        for sql in statements:
            self.sent += len(m.query(sql))
            self.read += wire_size(self.client.query(sql))

    def close(self) -> None:
        self.sent += len(m.terminate())
        self.client.close()


def one_session(port: int, user: str, db: str) -> tuple[int, int]:
    session = Session(port, user, db)
    session.run()
    session.close()
    return session.sent, session.read


class StatsTestCase(PoolerTestCase):
    def pool_of(self, service: PgpoolService, user: str, db: str) -> PoolStats:
        pools = service.snapshot().pools_of(user, db)
        self.assertEqual(len(pools), 1, pools)
        return pools[0]

    def counters(self, service: PgpoolService, user: str, db: str) -> tuple[int, ...]:
        pool = self.pool_of(service, user, db)
        return (pool.logins, pool.queries, pool.xacts, pool.bytes_in, pool.bytes_out)

    @defer.inlineCallbacks
    def sessions_counted(self, service: PgpoolService, user: str, db: str, count: int) -> Any:
        """Run ``count`` sessions one after another; check the pool counted exactly them."""
        before = (
            self.counters(service, user, db) if service.snapshot().pools_of(user, db) else (0,) * 5
        )
        sent = read = 0
        for _ in range(count):
            one_sent, one_read = yield self.in_thread(one_session, service.port, user, db)
            sent, read = sent + one_sent, read + one_read
            yield sleep(0.05)  # the reset, before the next login
        expected = tuple(
            b + d for b, d in zip(before, (count, count * QUERIES, count * XACTS, sent, read))
        )
        counted = yield eventually(lambda: self.counters(service, user, db) == expected)
        self.assertTrue(counted, (self.counters(service, user, db), expected))
        self.assertGreater(sent, 0)
        self.assertGreater(read, 0)


class TwistedPathStatsTests(StatsTestCase):
    @defer.inlineCallbacks
    def test_sessions_counted(self):
        """Logins, queries, transactions and bytes of Python-relayed sessions, exactly."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        yield self.sessions_counted(service, user, db, 3)
        snapshot = service.snapshot()
        self.assertEqual(snapshot.clients["active"], 0)
        (pool,) = snapshot.pools_of(user, db)
        self.assertEqual(dict(pool.servers[0]), {**dict(pool.servers[0]), "idle": 1, "active": 0})

    @defer.inlineCallbacks
    def test_live_session_counted_before_it_ends(self):
        """A session still open is in the snapshot: active client and server, its queries so far."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        session = yield self.in_thread(Session, service.port, user, db)
        yield self.in_thread(session.run, ("select 1",))
        snapshot = service.snapshot()
        (pool,) = snapshot.pools_of(user, db)
        self.assertEqual((snapshot.clients["active"], pool.clients["active"]), (1, 1))
        self.assertEqual((pool.servers[0]["active"], pool.servers[0]["idle"]), (1, 0))
        self.assertEqual((pool.logins, pool.queries, pool.xacts), (1, 1, 1))
        self.assertEqual((pool.bytes_in, pool.bytes_out), (session.sent, session.read))
        yield self.in_thread(session.close)
        closed = yield eventually(lambda: service.snapshot().clients["active"] == 0)
        self.assertTrue(closed)
        self.assertEqual(self.pool_of(service, user, db).bytes_in, session.sent)

    @defer.inlineCallbacks
    def test_waiting_client_and_wait_time(self):
        """With num_init_children=1 a second client waits: counted, then its wait is totalled."""
        service = self.start_pooler(num_init_children=1)
        user, db = self.role_and_db()
        holder = yield self.in_thread(Session, service.port, user, db)
        dsn = self.dsn(service, user, db)

        def waited() -> int:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
                return int(conn.execute("select 7").fetchone()[0])

        answer = self.in_thread(waited)
        seen = yield eventually(lambda: service.snapshot().waiting == 1)
        self.assertTrue(seen, "the second client never waited")
        yield sleep(0.2)
        snapshot = service.snapshot()
        (pool,) = snapshot.pools_of(user, db)
        self.assertEqual((snapshot.clients["waiting"], pool.waiting), (1, 1))
        self.assertGreater(pool.max_wait, 0.0)
        self.assertEqual(snapshot.max_wait, pool.max_wait)
        self.assertEqual(pool.wait_time, 0.0)  # counted when admitted, as PgBouncer does
        self.assertFalse(answer.called)
        yield self.in_thread(holder.close)
        self.assertEqual((yield answer), 7)
        pool = self.pool_of(service, user, db)
        self.assertEqual((pool.waiting, service.snapshot().waiting), (0, 0))
        self.assertGreater(pool.wait_time, 0.0)
        self.assertEqual(pool.logins, 2)


class WarmLaneStatsTests(StatsTestCase):
    c_loop = True

    def lane(self, service: PgpoolService) -> Any:
        warm = service.factory.warm
        self.assertIsNotNone(warm, "the C loop runs, so the service must have a warm lane")
        return warm.lane

    @defer.inlineCallbacks
    def test_warm_sessions_counted(self):
        """Sessions the C lane logs in and relays are counted exactly like Python's."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        yield self.sessions_counted(service, user, db, 2)  # Python's: learned, then lent
        hits = self.lane(service).hits
        yield self.sessions_counted(service, user, db, 3)
        self.assertEqual(self.lane(service).hits, hits + 3)

    @defer.inlineCallbacks
    def test_open_warm_session_in_snapshot(self):
        """An open warm session is an active client and an active server of its pool."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        yield self.sessions_counted(service, user, db, 2)
        hits = self.lane(service).hits
        session = yield self.in_thread(Session, service.port, user, db)
        yield self.in_thread(session.run, ("select 1",))
        self.assertEqual(self.lane(service).hits, hits + 1)
        self.assertEqual(len(service.factory.clients), 0, "the session is the lane's, not Python's")
        snapshot = service.snapshot()
        (pool,) = snapshot.pools_of(user, db)
        self.assertEqual((snapshot.clients["active"], pool.clients["active"]), (1, 1))
        self.assertEqual((pool.servers[0]["active"], pool.servers[0]["idle"]), (1, 0))
        self.assertEqual(
            (pool.logins, pool.queries, pool.xacts), (3, 2 * QUERIES + 1, 2 * XACTS + 1)
        )
        yield self.in_thread(session.close)
        idle = yield eventually(lambda: self.pool_of(service, user, db).servers[0]["idle"] == 1)
        self.assertTrue(idle)
        self.assertEqual(service.snapshot().clients["active"], 0)

    @defer.inlineCallbacks
    def test_promoted_session_counted_once(self):
        """A warm session promoted to Python's relay (a slow reader) is one login, counted once."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        yield self.sessions_counted(service, user, db, 2)
        before = self.counters(service, user, db)
        rows = 20000  # 20 MB: far more than the socket buffers hold

        def slow() -> Session:
            session = Session(service.port, user, db)
            client = session.client
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sql = f"select repeat('x', 1000) from generate_series(1, {rows})"
            client.send(m.query(sql))
            session.sent += len(m.query(sql))
            time.sleep(1.0)  # let the pooler's sends fill the socket buffers
            session.read += wire_size(client.until_ready())
            session.run(("select 1",))
            session.close()
            return session

        session = yield self.in_thread(slow)
        self.assertEqual(service.factory.warm.promoted, 1)
        expected = tuple(b + d for b, d in zip(before, (1, 2, 2, session.sent, session.read)))
        counted = yield eventually(lambda: self.counters(service, user, db) == expected)
        self.assertTrue(counted, (self.counters(service, user, db), expected))
