"""Client sessions through an in-process pooler: startup, reuse, cancel, relay, failures."""

from __future__ import annotations

import socket
import struct
import time

import psycopg
import psycopg.sql
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.sql import quote_ident
from pgpool_tw.protocol.startup import SSL_REQUEST_CODE
from tests.integration.harness import (
    PoolerTestCase,
    RawClient,
    error_fields,
    error_of,
    recv_until_closed,
    send_cancel,
    sleep,
)


def _one(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def _raw(port: int, packet: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(packet)
        return recv_until_closed(sock)


class StartupTests(PoolerTestCase):
    @defer.inlineCallbacks
    def test_query_pipelined_with_the_startup_packet(self):
        """A StartupMessage and a Query in one write (issue #20, item 6): the Query is
        kept while a new server logs in and answered after, as PostgreSQL does."""
        service = self.start_pooler()
        user, db = self.role_and_db()

        def run() -> list[tuple[int, bytes]]:
            client = RawClient(service.port)
            body = m.INT32.pack(196608) + m.cstring("user") + m.cstring(user)
            body += m.cstring("database") + m.cstring(db) + b"\0"
            client.send(m.UINT32.pack(len(body) + 4) + body + m.query("select 6 * 7"))
            seen: list[tuple[int, bytes]] = []
            while sum(kind == m.READY_FOR_QUERY for kind, _ in seen) < 2:
                seen += client.read_messages()  # the login's end, then the query's answer
            client.close()
            return seen

        seen = yield self.in_thread(run)
        self.assertEqual(error_fields(seen), {})
        rows = [body for kind, body in seen if kind == ord("D")]
        self.assertEqual(len(rows), 1)
        self.assertIn(b"42", rows[0])

    @defer.inlineCallbacks
    def test_oversized_startup_packet_refused(self):
        """A startup packet length of 10000 or more gets FATAL 08P01 and a close."""
        service = self.start_pooler()
        raw = yield self.in_thread(_raw, service.port, struct.pack("!II", 10008, 196608))
        self.assertEqual(error_of(raw).get("C"), "08P01")

    @defer.inlineCallbacks
    def test_protocol_2_refused(self):
        """Protocol 2.0 gets an ErrorResponse naming the unsupported version."""
        service = self.start_pooler()
        raw = yield self.in_thread(_raw, service.port, struct.pack("!II", 9, 2 << 16) + b"\0")
        fields = error_of(raw)
        self.assertEqual(fields.get("C"), "0A000")
        self.assertIn("2.0", fields.get("M", ""))

    @defer.inlineCallbacks
    def test_no_user_refused(self):
        """A startup packet without user gets FATAL 28000 with PostgreSQL's wording."""
        service = self.start_pooler()
        body = struct.pack("!I", 196608) + b"database\0x\0\0"
        raw = yield self.in_thread(_raw, service.port, struct.pack("!I", len(body) + 4) + body)
        fields = error_of(raw)
        self.assertEqual(fields.get("C"), "28000")
        self.assertEqual(fields.get("M"), "no PostgreSQL user name specified in startup packet")

    @defer.inlineCallbacks
    def test_ssl_request_answered_n_then_startup(self):
        """SSLRequest is answered N and the plaintext startup that follows is served."""
        service = self.start_pooler()
        user, db = self.role_and_db()

        def run() -> tuple[bytes, object]:
            client = RawClient(service.port)
            client.send(struct.pack("!II", 8, SSL_REQUEST_CODE))
            answer = client.sock.recv(1)
            client.startup(user=user, database=db)
            result = client.query("select current_user")
            client.close()
            return answer, [b for k, b in result if k == ord("D")]

        answer, rows = yield self.in_thread(run)
        self.assertEqual(answer, b"N")
        self.assertIn(user.encode(), rows[0])

    @defer.inlineCallbacks
    def test_accepted_client_sockets_have_nodelay_and_keepalive(self):
        """A client's socket at the pooler has TCP_NODELAY and SO_KEEPALIVE (from the listener)."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        client = RawClient(service.port)
        self.addCleanup(client.close)
        yield self.in_thread(client.startup, user=user, database=db)
        (frontend,) = service.factory.clients
        sock = frontend.transport.socket
        self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.assertTrue(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        self.assertTrue(service.factory.listeners_tuned)

    @defer.inlineCallbacks
    def test_terminate_ends_in_an_orderly_close(self):
        """After Terminate the client reads end of file (a FIN, no reset); its server is pooled."""
        service = self.start_pooler()
        user, db = self.role_and_db()

        def run() -> tuple[bytes, int]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            pid = client.pid
            client.send(m.terminate())
            try:
                return client.sock.recv(1), pid
            finally:
                client.sock.close()

        tail, pid = yield self.in_thread(run)
        self.assertEqual(tail, b"")
        client = RawClient(service.port)
        self.addCleanup(client.close)
        yield self.in_thread(client.startup, user=user, database=db)
        self.assertEqual(client.pid, pid)

    @defer.inlineCallbacks
    def test_psycopg_prefers_ssl_and_falls_back(self):
        """psycopg's default sslmode=prefer connects (the pooler says N to SSL and GSS)."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db, sslmode="prefer", gssencmode="prefer")
        who = yield self.in_thread(_one, dsn, "select current_user")
        self.assertEqual(who, user)

    @defer.inlineCallbacks
    def test_database_defaults_to_user(self):
        """A startup packet with no database connects to the database named like the user."""
        service = self.start_pooler()
        user = self.role_and_db()[0]
        self.pg.create_database(user, owner=user)

        def run() -> list[tuple[int, bytes]]:
            client = RawClient(service.port)
            client.startup(user=user)
            rows = client.query("select current_database()")
            client.close()
            return rows

        rows = yield self.in_thread(run)
        self.assertIn(user.encode(), b"".join(b for k, b in rows if k == ord("D")))

    @defer.inlineCallbacks
    def test_startup_options_reach_server_and_split_pools(self):
        """options=-c work_mem=5MB reaches the server, and such sessions get their own pool."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        plain = self.dsn(service, user, db)
        tuned = self.dsn(service, user, db, options="-c work_mem=5MB")
        first = yield self.in_thread(_one, plain, "select pg_backend_pid()")
        mem = yield self.in_thread(_one, tuned, "show work_mem")
        other = yield self.in_thread(_one, tuned, "select pg_backend_pid()")
        self.assertEqual(mem, "5MB")
        self.assertNotEqual(first, other)
        again = yield self.in_thread(_one, plain, "select pg_backend_pid()")
        self.assertEqual(first, again)


class ReuseTests(PoolerTestCase):
    @defer.inlineCallbacks
    def test_reuse_same_server_pid(self):
        """Two sessions of one user and database are served by the same server process."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)
        first = yield self.in_thread(_one, dsn, "select pg_backend_pid()")
        second = yield self.in_thread(_one, dsn, "select pg_backend_pid()")
        self.assertEqual(first, second)
        self.assertEqual(service.pool.reused, 1)

    @defer.inlineCallbacks
    def test_reset_hides_previous_session_state(self):
        """SET, a temp table, a prepared statement and an open transaction do not leak."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)

        def dirty() -> int:
            conn = psycopg.connect(dsn, autocommit=True)
            conn.execute("set work_mem = '7MB'")
            conn.execute("create temp table leak (x int)")
            conn.execute("prepare leaky as select 1")
            conn.execute("begin")
            conn.execute("insert into leak values (1)")
            pid = conn.info.backend_pid
            conn.close()
            return pid

        def look() -> tuple[int, str, int, int, str]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                temp = conn.execute(
                    "select count(*) from pg_class where relpersistence = 't'"
                ).fetchone()[0]
                prepared = conn.execute("select count(*) from pg_prepared_statements").fetchone()
                return (
                    conn.execute("select pg_backend_pid()").fetchone()[0],
                    conn.execute("show work_mem").fetchone()[0],
                    temp,
                    prepared[0],
                    conn.info.transaction_status.name,
                )

        pid = yield self.in_thread(dirty)
        seen = yield self.in_thread(look)
        self.assertEqual(seen, (pid, "4MB", 0, 0, "IDLE"))

    @defer.inlineCallbacks
    def test_reused_session_gets_parameters_and_real_pid(self):
        """A reused session receives every ParameterStatus and BackendKeyData with the real pid."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)

        def run() -> tuple[int, int, dict[str, str]]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                real = conn.execute("select pg_backend_pid()").fetchone()[0]
                names = ["server_version", "TimeZone", "client_encoding", "DateStyle"]
                return (
                    real,
                    conn.info.backend_pid,
                    {n: conn.info.parameter_status(n) for n in names},
                )

        first = yield self.in_thread(run)
        second = yield self.in_thread(run)
        self.assertEqual(first[0], second[0])
        self.assertEqual(second[0], second[1])
        self.assertEqual(first[2], second[2])
        self.assertTrue(all(second[2].values()))

    @defer.inlineCallbacks
    def test_application_name_set_and_quoted(self):
        """A reused connection gets the new client's application_name, quoted safely."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        tricky = "it's a \\ name'; drop table x; --"

        def run(name: str) -> tuple[int, str, str]:
            with psycopg.connect(self.dsn(service, user, db), application_name=name) as conn:
                return (
                    conn.info.backend_pid,
                    conn.execute("show application_name").fetchone()[0],
                    conn.info.parameter_status("application_name"),
                )

        first = yield self.in_thread(run, "first")
        second = yield self.in_thread(run, tricky)
        third = yield self.in_thread(run, "")
        self.assertEqual(first[1:], ("first", "first"))
        self.assertEqual(second, (first[0], tricky, tricky))
        self.assertEqual(third, (first[0], "", ""))


class CancelTests(PoolerTestCase):
    @defer.inlineCallbacks
    def test_unknown_key_flood_is_logged_once_a_second(self):
        """200 CancelRequests with wrong keys, then one more after a second (issue #20,
        item 4): a line per second, each saying how many it stands for, and every one
        of the 201 counted."""
        from twisted.logger import formatEvent

        service = self.start_pooler()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def flood(count: int) -> None:
            for i in range(count):
                send_cancel(service.port, 12345 + i, 678)

        yield self.in_thread(flood, 200)
        yield sleep(1.2)
        yield self.in_thread(flood, 1)
        yield sleep(0.2)
        lines = [formatEvent(e) for e in events if "unknown key" in formatEvent(e)]
        more = [int(line.split("(")[1].split()[0]) for line in lines if "more since" in line]
        self.assertEqual(len(lines) + sum(more), 201, lines)
        self.assertLess(len(lines), 201)
        self.assertTrue(more, lines)  # the last line counted the ones left out

    @defer.inlineCallbacks
    def test_cancel_reaches_the_server(self):
        """psycopg's cancel() through the pooler stops a running query with 57014."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        conn = yield self.in_thread(psycopg.connect, self.dsn(service, user, db), autocommit=True)
        self.addCleanup(conn.close)
        running = self.in_thread(conn.execute, "select pg_sleep(30)")
        yield sleep(0.5)
        yield self.in_thread(conn.cancel_safe)  # cancel() holds the GIL while blocking
        started = time.monotonic()
        error = yield self.assertFailure(running, psycopg.errors.QueryCanceled)
        self.assertLess(time.monotonic() - started, 25)
        self.assertEqual(error.sqlstate, "57014")

    @defer.inlineCallbacks
    def test_wrong_or_stale_key_cancels_nothing(self):
        """A CancelRequest with a wrong key, or an earlier session's key, is ignored."""
        service = self.start_pooler()
        user, db = self.role_and_db()

        def run() -> tuple[list[tuple[int, bytes]], int, int, int]:
            old = RawClient(service.port)
            old.startup(user=user, database=db)
            stale_pid, stale_key = old.pid, old.key
            old.close()
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.send(m.query("select pg_sleep(1.5)"))
            time.sleep(0.3)
            send_cancel(service.port, stale_pid, stale_key)
            send_cancel(service.port, client.pid, client.key ^ 1)
            result = client.until_ready()
            client.close()
            return result, stale_pid, client.pid, stale_key == client.key

        result, stale_pid, pid, same_key = yield self.in_thread(run)
        self.assertEqual(stale_pid, pid)  # the same server process served both
        self.assertFalse(same_key)  # but each session got its own key
        self.assertEqual(error_fields(result), {})


class RelayTests(PoolerTestCase):
    @defer.inlineCallbacks
    def test_copy_in_and_out(self):
        """COPY FROM STDIN and COPY TO STDOUT pass through unchanged."""
        service = self.start_pooler()
        user, db = self.role_and_db()

        def run() -> tuple[int, bytes]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("create table t (a int, b text)")
                with conn.cursor().copy("copy t from stdin") as copy:
                    for i in range(5000):
                        copy.write_row((i, f"row {i}"))
                out = bytearray()
                with conn.cursor().copy("copy (select * from t order by a) to stdout") as copy:
                    for chunk in copy:
                        out += chunk
                return conn.execute("select count(*) from t").fetchone()[0], bytes(out)

        count, out = yield self.in_thread(run)
        self.assertEqual(count, 5000)
        self.assertEqual(out.splitlines()[4999], b"4999\trow 4999")

    @defer.inlineCallbacks
    def test_listen_notify_with_real_pid(self):
        """NOTIFY reaches a listener, and its pid is the notifier's pid as the pooler told it."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)

        def run() -> tuple[str, int, int]:
            with psycopg.connect(dsn, autocommit=True) as listener:
                listener.execute("listen news")
                with psycopg.connect(dsn, autocommit=True) as talker:
                    talker.execute("notify news, 'hello'")
                    talker_pid = talker.info.backend_pid
                for note in listener.notifies(timeout=10):
                    return note.payload, note.pid, talker_pid
            raise AssertionError("no notification")

        payload, pid, talker_pid = yield self.in_thread(run)
        self.assertEqual((payload, pid), ("hello", talker_pid))

    @defer.inlineCallbacks
    def test_large_result_to_slow_client_stays_bounded(self):
        """A 100 MB result to a slow reader pauses the server side instead of buffering it."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        most_buffered = [0]
        paused = [False]

        def sample() -> None:
            for client in service.factory.clients:
                t = client.transport
                most_buffered[0] = max(most_buffered[0], len(t.dataBuffer) + t._tempDataLen)
                if client._producers and client._producers[1].paused:
                    paused[0] = True

        from twisted.internet.task import LoopingCall

        sampler = LoopingCall(sample)
        sampler.start(0.01)
        self.addCleanup(sampler.stop)

        def run() -> tuple[int, int]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.send(m.query("select repeat('x', 1000) from generate_series(1, 100000)"))
            total = rows = 0
            reader = m.MessageReader()
            done = False
            while not done:
                data = client.sock.recv(65536)
                if not data:
                    break
                total += len(data)
                if total < 20_000_000:
                    time.sleep(0.002)  # slow at first: the pooler must hold back
                for kind, _ in reader.feed(data):
                    if kind == ord("D"):
                        rows += 1
                    elif kind == m.READY_FOR_QUERY:
                        done = True
            client.close()
            return total, rows

        total, rows = yield self.in_thread(run)
        self.assertEqual(rows, 100000)
        self.assertGreater(total, 100_000_000)
        self.assertTrue(paused[0], "the server leg was never paused")
        self.assertLess(most_buffered[0], 4 * 1024 * 1024)

    @defer.inlineCallbacks
    def test_fast_client_to_blocked_server_stays_bounded(self):
        """COPY data sent to a server that is not reading pauses the client, not buffers it."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        table = f"{db}_t"  # unique_name(): an identifier-safe name
        self.pg.psql(
            'create table :"t" (x text); alter table :"t" owner to :"u";',
            dbname=db,
            variables={"t": table, "u": user},
        )
        most_buffered = [0]
        paused = [False]

        def sample() -> None:
            for server in service.factory.servers.live:
                t = server.transport
                most_buffered[0] = max(most_buffered[0], len(t.dataBuffer) + t._tempDataLen)
            for client in service.factory.clients:
                if client._producers and client._producers[0].paused:
                    paused[0] = True

        from twisted.internet.task import LoopingCall

        sampler = LoopingCall(sample)
        sampler.start(0.01)
        self.addCleanup(sampler.stop)

        def run() -> int:
            locker = psycopg.connect(self.pg.dsn(dbname=db))
            locker.execute(psycopg.sql.SQL("lock table {}").format(psycopg.sql.Identifier(table)))
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            client.sock.settimeout(0.5)
            client.send(m.query(f"copy {quote_ident(table)} from stdin"))
            row = m.message(b"d", b"y" * 8000 + b"\n")
            sent = 0
            try:
                while sent < 64 * 1024 * 1024:
                    client.sock.sendall(row)
                    sent += len(row)
            except (socket.timeout, TimeoutError):
                pass  # the pooler stopped reading: what this test wants
            locker.rollback()
            locker.close()
            client.sock.close()
            return sent

        sent = yield self.in_thread(run)
        self.assertLess(sent, 64 * 1024 * 1024, "the client was never held back")
        self.assertTrue(paused[0], "the client leg was never paused")
        self.assertLess(most_buffered[0], 4 * 1024 * 1024)


class FailureTests(PoolerTestCase):
    @defer.inlineCallbacks
    def test_backend_unreachable(self):
        """An unreachable backend gives FATAL 08006 naming host:port; the pooler carries on."""
        from pgpool_tw.config.settings import BackendNode
        from pgpool_tw_dev.devdb import free_port

        dead = free_port()
        service = self.start_pooler(backends=(BackendNode(0, "127.0.0.1", dead),))
        error = yield self.assertFailure(
            self.in_thread(psycopg.connect, self.dsn(service, "x", "y")), psycopg.OperationalError
        )
        self.assertIn(f"127.0.0.1:{dead}", str(error))
        self.assertIn("could not connect to server", str(error))
        # The client sees the FATAL before the pooler sees it hang up: allow for that.
        for _ in range(100):
            if not service.pool.sessions:
                break
            yield sleep(0.05)
        self.assertEqual(service.pool.sessions, {})

    @defer.inlineCallbacks
    def test_server_killed_mid_session(self):
        """A server that dies mid-session errors its client only; others carry on."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        dsn = self.dsn(service, user, db)
        victim = yield self.in_thread(psycopg.connect, dsn, autocommit=True)
        bystander = yield self.in_thread(psycopg.connect, dsn, autocommit=True)
        self.addCleanup(victim.close)
        self.addCleanup(bystander.close)
        self.pg.psql(f"select pg_terminate_backend({victim.info.backend_pid})")
        yield self.assertFailure(
            self.in_thread(victim.execute, "select 1"), psycopg.OperationalError
        )
        still = yield self.in_thread(lambda: bystander.execute("select 7").fetchone()[0])
        self.assertEqual(still, 7)
        fresh = yield self.in_thread(_one, dsn, "select pg_backend_pid()")
        self.assertNotEqual(fresh, victim.info.backend_pid)

    @defer.inlineCallbacks
    def test_log_connections(self):
        """log_connections logs the client's address, user and database."""
        service = self.start_pooler(log_connections=True)
        user, db = self.role_and_db()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.in_thread(_one, self.dsn(service, user, db), "select 1")
        lines = [e for e in events if e.get("user") == user]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["database"], db)
        self.assertTrue(lines[0]["client"].startswith("127.0.0.1:"))


class PasswordServerTests(PoolerTestCase):
    """The server's own authentication exchange is relayed; such connections are not shared."""

    auth_method = "scram-sha-256"

    @defer.inlineCallbacks
    def test_right_password_connects_wrong_refused_no_reuse(self):
        """SCRAM: the right password works, a wrong one gets 28P01, and nothing is reused."""
        service = self.start_pooler()
        user, db = self.role_and_db(password="s3cret")
        good = self.dsn(service, user, db, password="s3cret")
        bad = self.dsn(service, user, db, password="wrong")
        first = yield self.in_thread(_one, good, "select pg_backend_pid()")
        error = yield self.assertFailure(
            self.in_thread(_one, bad, "select 1"), psycopg.OperationalError
        )
        self.assertIn("password authentication failed", str(error))
        second = yield self.in_thread(_one, good, "select pg_backend_pid()")
        self.assertNotEqual(first, second)
        self.assertEqual(service.pool.idle_count, 0)


class Md5ServerTests(PasswordServerTests):
    auth_method = "md5"
