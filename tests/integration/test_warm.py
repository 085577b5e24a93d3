"""Warm logins (warm.py): clients the pooler has seen, logged in by the C loop alone.

Every test here runs the reactor with the C iteration (as ``twistd pgpool``
does) and checks, besides what the client sees, that the lane really served the
login (its ``hits``), so a lane that silently sends everything to Python fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time

import psycopg
from twisted.internet import defer

from pgpool_tw.config.authfiles import load_auth_files
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.login_end import login_end
from pgpool_tw.service import PgpoolService
from pgpool_tw.session.cancel import KEY_BLOCK
from tests.integration.harness import (
    PoolerTestCase,
    RawClient,
    error_fields,
    send_cancel,
    sleep,
)
from tests.integration.test_embedding import Recorder


def _pid(dsn: str, sslmode: str = "prefer") -> int:
    with psycopg.connect(dsn, autocommit=True, sslmode=sslmode) as conn:
        return int(conn.execute("select pg_backend_pid()").fetchone()[0])


class WarmLoginTests(PoolerTestCase):
    c_loop = True

    def lane(self, service: PgpoolService):
        warm = service.factory.warm
        self.assertIsNotNone(warm, "the C loop runs, so the service must have a warm lane")
        return warm.lane

    @defer.inlineCallbacks
    def warm_up(self, service: PgpoolService, user: str, db: str):
        """Log in twice as RawClient does (Python learns it, then lends its server)."""
        for _ in range(2):
            client = yield self.in_thread(RawClient, service.port)
            yield self.in_thread(client.startup, user=user, database=db)
            yield self.in_thread(client.close)
            yield sleep(0.1)  # the reset, before the next login
        self.assertGreaterEqual(service.pool.idle_count, 1)
        return self.lane(service).hits

    @defer.inlineCallbacks
    def test_repeat_clients_are_logged_in_by_the_lane(self):
        """A client sending the same startup packet again is served by the lane, same server."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)
        pids = []
        for _ in range(5):
            pids.append((yield self.in_thread(_pid, dsn)))
            yield sleep(0.1)
        lane = self.lane(service)
        self.assertEqual(len(set(pids)), 1)
        self.assertGreaterEqual(lane.hits, 3)  # the first login (and its lending) is Python's
        self.assertEqual(lane.active, 0)
        yield sleep(0.2)  # the last session's reset
        self.assertEqual(service.pool.idle_count, 1)

    @defer.inlineCallbacks
    def test_warm_session_state_is_reset(self):
        """What one warm session set, prepared or left open is gone for the next one."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)
        hits = yield self.warm_up(service, user, db)

        def dirty() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("set work_mem = '7MB'")
                conn.execute("create temp table leak (x int)")
                conn.execute("prepare leaky as select 1")

        def look() -> tuple[str, int, int]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return (
                    conn.execute("show work_mem").fetchone()[0],
                    conn.execute(
                        "select count(*) from pg_class where relpersistence = 't'"
                    ).fetchone()[0],
                    conn.execute("select count(*) from pg_prepared_statements").fetchone()[0],
                )

        yield self.in_thread(dirty)
        yield sleep(0.1)
        seen = yield self.in_thread(look)
        self.assertEqual(seen, ("4MB", 0, 0))
        self.assertEqual(self.lane(service).hits, hits + 2)

    @defer.inlineCallbacks
    def test_client_vanishing_mid_transaction_leaves_no_transaction(self):
        """A warm client gone without Terminate inside a transaction: the next one is clean."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)
        hits = yield self.warm_up(service, user, db)

        def vanish() -> None:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.query("begin")
            client.query("create table gone (x int)")
            client.close(terminate=False)

        def look() -> tuple[int, str]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                found = conn.execute("select count(*) from pg_class where relname = 'gone'")
                return found.fetchone()[0], conn.info.transaction_status.name

        yield self.in_thread(vanish)
        yield sleep(0.2)
        self.assertEqual((yield self.in_thread(look)), (0, "IDLE"))
        self.assertGreater(self.lane(service).hits, hits)

    @defer.inlineCallbacks
    def test_cancel_reaches_a_warm_session(self):
        """The cancel key a warm login hands out cancels that session's query."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)

        def run() -> str:
            # A raw client: libpq's PQcancel keeps the GIL while it waits, which
            # would stall this in-process pooler.
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            timer = threading.Timer(0.5, send_cancel, (service.port, client.pid, client.key))
            timer.start()
            try:
                return error_fields(client.query("select pg_sleep(30)")).get("C", "finished")
            finally:
                timer.cancel()
                client.close()

        started = time.monotonic()
        self.assertEqual((yield self.in_thread(run)), "57014")
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(self.lane(service).hits, hits + 1)

    @defer.inlineCallbacks
    def test_large_result_to_a_slow_reader_is_promoted_intact(self):
        """A warm client that does not read: the session moves to Twisted, nothing is lost."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)
        rows = 20000  # 20 MB: far more than the socket buffers hold

        def slow() -> int:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.send(m.query(f"select repeat('x', 1000) from generate_series(1, {rows})"))
            time.sleep(1.0)  # let the pooler's sends fill the socket buffers
            got = 0
            for kind, body in client.until_ready():
                if kind == ord("D") and body.endswith(b"x" * 1000):
                    got += 1
            after = client.query("select 1")
            client.close()
            return got if after[-1][0] == m.READY_FOR_QUERY else -1

        self.assertEqual((yield self.in_thread(slow)), rows)
        self.assertEqual(self.lane(service).hits, hits + 1)
        self.assertEqual(service.factory.warm.promoted, 1)

    @defer.inlineCallbacks
    def test_server_killed_under_a_warm_session(self):
        """The server of a warm session dies: that client gets 08006, the next one is served."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)
        hits = yield self.warm_up(service, user, db)

        def killed() -> dict[str, str]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            self.pg.psql("select pg_terminate_backend(:p)", variables={"p": str(client.pid)})
            try:
                return error_fields(client.query("select 1"))
            except ConnectionError:
                return {"C": "closed"}
            finally:
                client.sock.close()

        fields = yield self.in_thread(killed)
        self.assertIn(fields.get("C"), ("08006", "57P01", "closed"))
        self.assertEqual(self.lane(service).hits, hits + 1)
        self.assertEqual((yield self.in_thread(_pid, dsn)) > 0, True)

    @defer.inlineCallbacks
    def test_fast_shutdown_reaches_warm_sessions(self):
        """A fast shutdown tells a client logged in by the lane 57P01, as any other."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)
        client = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(client.startup, user=user, database=db)
        self.assertEqual(self.lane(service).hits, hits + 1)
        yield service.shutdown("fast")
        raw = yield self.in_thread(client.read_all)
        client.sock.close()
        self.assertEqual(error_fields(m.MessageReader().feed(raw)).get("C"), "57P01")

    @defer.inlineCallbacks
    def test_client_slots_count_warm_sessions(self):
        """num_init_children counts warm sessions: a client past it waits for one to end."""
        service = self.start_pooler(num_init_children=1)
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)
        yield self.in_thread(_pid, dsn)
        yield self.in_thread(_pid, dsn)
        deadline = time.monotonic() + 10
        while service.pool.idle_count < 1 and time.monotonic() < deadline:
            yield sleep(0.02)  # the reset, before the lane can lend the server again
        holder = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(holder.startup, user=user, database=db)
        self.assertEqual(self.lane(service).active, 1)
        waited = self.in_thread(_pid, dsn)
        yield sleep(0.3)
        self.assertFalse(waited.called)
        self.assertEqual(service.pool.waiting, 1)
        yield self.in_thread(holder.close)
        self.assertGreater((yield waited), 0)

    @defer.inlineCallbacks
    def test_a_silent_client_is_closed_after_authentication_timeout(self):
        """A client that connects and says nothing holds no slot past authentication_timeout."""
        service = self.start_pooler(authentication_timeout=1)
        lane = self.lane(service)

        def silent() -> bytes:
            with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
                return sock.recv(100)

        started = time.monotonic()
        self.assertEqual((yield self.in_thread(silent)), b"")
        self.assertLess(time.monotonic() - started, 8)
        self.assertEqual(lane.pending, 0)

    @defer.inlineCallbacks
    def test_reload_forgets_what_the_lane_learned(self):
        """A pool_hba.conf that now rejects the client is obeyed at once, not bypassed in C."""
        directory = tempfile.mkdtemp(prefix="pgtw-warm-")
        self.addCleanup(shutil.rmtree, directory, True)
        hba = os.path.join(directory, "pool_hba.conf")
        passwd = os.path.join(directory, "pool_passwd")
        with open(hba, "w", encoding="utf-8") as handle:
            handle.write("host all all 127.0.0.1/32 trust\n")
        with open(os.open(passwd, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
            handle.write("\n")
        service = self.start_pooler(enable_pool_hba=True, pool_hba_file=hba, pool_passwd=passwd)
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)
        self.assertGreater(len(self.lane(service).entries), 0)
        with open(hba, "w", encoding="utf-8") as handle:
            handle.write("host all all 127.0.0.1/32 reject\n")
        service.factory.auth_files = load_auth_files(service.config)  # what reload() does
        service.apply(service.config)
        client = yield self.in_thread(RawClient, service.port)
        messages = yield self.in_thread(client.startup, user=user, database=db)
        client.sock.close()
        self.assertEqual(error_fields(messages).get("C"), "28000")
        self.assertEqual(self.lane(service).hits, hits)

    @defer.inlineCallbacks
    def test_child_max_connections_counts_warm_sessions(self):
        """A server retires after child_max_connections sessions, warm ones included."""
        service = self.start_pooler(child_max_connections=4)
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)  # sessions 1 and 2 on one server

        def session() -> int:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            pid = client.pid
            client.close()
            return pid

        pids = []
        for _ in range(4):
            pids.append((yield self.in_thread(session)))
            yield sleep(0.1)
        self.assertEqual(self.lane(service).hits, hits + 3)  # the fifth login found none
        self.assertEqual(pids[0], pids[1])
        self.assertNotEqual(pids[1], pids[2])  # sessions 3 and 4 were the first's last

    @defer.inlineCallbacks
    def test_reported_parameter_a_session_set_is_reset_for_the_next(self):
        """SET DateStyle in one warm session: the next one is told, and shows, the default."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)

        def change() -> str:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.query("set datestyle = 'SQL, DMY'")
            told = client.params.get("DateStyle", "")
            client.close()
            return told

        def look() -> tuple[str, bool]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            told = client.params.get("DateStyle", "")
            shown = client.query("show datestyle")
            client.close()
            return told, any(kind == ord("D") and b"ISO, MDY" in body for kind, body in shown)

        self.assertEqual((yield self.in_thread(change)), "SQL, DMY")
        yield sleep(0.2)
        self.assertEqual((yield self.in_thread(look)), ("ISO, MDY", True))
        self.assertEqual(self.lane(service).hits, hits + 2)

    @defer.inlineCallbacks
    def test_connection_life_time_closes_lent_servers(self):
        """An idle server parked with the lane is closed after connection_life_time."""
        service = self.start_pooler(connection_life_time=1)
        user, db = self.role_and_db()
        yield self.warm_up(service, user, db)
        self.assertEqual(len(self.server_pids(user)), 1)
        deadline = time.monotonic() + 10
        while self.server_pids(user) and time.monotonic() < deadline:
            yield sleep(0.2)
        self.assertEqual(self.server_pids(user), set())
        self.assertEqual(service.pool.idle_count, 0)

    @defer.inlineCallbacks
    def test_observer_sees_warm_sessions_and_they_stay_warm(self):
        """Observers are told of warm sessions (on the tick), and warm logins stay on."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        recorder = Recorder()
        service.add_observer(recorder)
        hits = yield self.warm_up(service, user, db)

        def session() -> tuple[int, int]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            port = client.sock.getsockname()[1]
            client.query("select 1")
            client.close()
            return client.pid, port

        seen = []
        for _ in range(2):
            seen.append((yield self.in_thread(session)))
            yield sleep(0.1)
        self.assertEqual(self.lane(service).hits, hits + 2)
        deadline = time.monotonic() + 10
        while len(recorder.of("client_session_ended")) < 4 and time.monotonic() < deadline:
            yield sleep(0.05)
        sessions = [event for event in recorder.events if "session" in event[0]]
        self.assertEqual(
            [name for name, _ in sessions], ["client_session_started", "client_session_ended"] * 4
        )
        for (_, started), (_, ended) in zip(sessions[0::2], sessions[1::2]):
            self.assertEqual(started, ended)
            self.assertEqual((started.user, started.database), (user, db))
        warm = [info for _, info in sessions[4::2]]
        self.assertEqual(
            [(info.server_pid, info.client) for info in warm],
            [(pid, f"127.0.0.1:{port}") for pid, port in seen],
        )
        service.remove_observer(recorder)
        self.assertIsNone(self.lane(service).log)

    @defer.inlineCallbacks
    def test_observer_sees_promoted_session_as_two(self):
        """A promoted warm session: its warm part starts and ends, then Python's, in order."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)
        recorder = Recorder()
        service.add_observer(recorder)

        def slow() -> int:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.send(m.query("select repeat('x', 1000) from generate_series(1, 20000)"))
            time.sleep(1.0)  # let the pooler's sends fill the socket buffers
            client.until_ready()
            client.close()
            return client.pid

        pid = yield self.in_thread(slow)
        self.assertEqual((self.lane(service).hits, service.factory.warm.promoted), (hits + 1, 1))
        deadline = time.monotonic() + 10
        while len(recorder.of("client_session_ended")) < 2 and time.monotonic() < deadline:
            yield sleep(0.05)
        sessions = [event for event in recorder.events if "session" in event[0]]
        self.assertEqual(
            [name for name, _ in sessions], ["client_session_started", "client_session_ended"] * 2
        )
        self.assertEqual([info.server_pid for _, info in sessions], [pid] * 4)
        self.assertEqual(sessions[0][1], sessions[1][1])
        self.assertEqual(sessions[2][1], sessions[3][1])

    @defer.inlineCallbacks
    def test_cancel_key_must_match_in_every_byte(self):
        """The lane finds a warm session's server by its whole cancel key, no byte ignored."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        yield self.warm_up(service, user, db)
        client = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(client.startup, user=user, database=db)
        warm = service.factory.warm
        self.assertEqual(warm.active, 1)
        server = warm.find(client.pid, client.key)
        self.assertIsNotNone(server)
        self.assertEqual(server.pid, client.pid)
        for byte in range(4):
            self.assertIsNone(warm.find(client.pid, client.key ^ (0x80 << (8 * byte))))
            self.assertIsNone(warm.find(client.pid, client.key ^ (0x01 << (8 * byte))))
        self.assertIsNone(warm.find(client.pid ^ 1, client.key))
        yield self.in_thread(client.close)

    @defer.inlineCallbacks
    def test_warm_login_ends_as_a_python_login_does(self):
        """A warm login's bytes are login_end's, with the relay's own secret in BackendKeyData."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)
        client = yield self.in_thread(RawClient, service.port)
        got = yield self.in_thread(client.startup, user=user, database=db)
        self.assertEqual(self.lane(service).hits, hits + 1)
        (relay,) = self.lane(service).sessions()
        server = relay.connection
        self.assertEqual(client.key, relay.secret)
        expected, _ = login_end(server.parameter_statuses(), server.pid, relay.secret, m.IDLE)
        self.assertEqual(b"".join(m.message(bytes([kind]), body) for kind, body in got), expected)
        yield self.in_thread(client.close)

    @defer.inlineCallbacks
    def test_cancel_keys_come_from_python_and_are_topped_up(self):
        """Each warm login uses 4 of Python's random bytes; the tick tops the block up."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        hits = yield self.warm_up(service, user, db)
        service._ticker.stop()  # only this test's tick may top the keys up
        lane = self.lane(service)
        full = lane.keys_left
        self.assertEqual(full, KEY_BLOCK)
        for _ in range(3):
            yield self.in_thread(_pid, self.dsn(service, user, db))
            yield sleep(0.1)
        self.assertEqual(lane.hits, hits + 3)
        self.assertEqual(lane.keys_left, full - 12)
        service.factory.warm.tick()
        self.assertEqual(lane.keys_left, full)
