"""Transaction pooling (pool_mode = transaction) with real clients and a real PostgreSQL.

The pool is kept small (two servers) so that where a client lands is known: a server
given back is the first one handed out again (most recently used first).  Each pinning
test has a second client take the server the first one would have given back, so state
that was not pinned would be lost where the test looks for it.
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

import psycopg
from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from tests.integration.harness import PoolerTestCase, RawClient, error_fields, eventually

Steps = Generator[Deferred[Any], Any, None]


def _open(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=20, **kwargs)


def _one(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


#: Two servers, so that where a client lands is known (see the module's docstring).
SMALL_POOL: dict[str, Any] = {
    "pool_mode": "transaction",
    "default_pool_size": 2,
    "max_client_conn": 50,
}


class TransactionPoolingTests(PoolerTestCase):
    def start(self, **settings: Any) -> tuple[PgpoolService, str]:
        values: dict[str, Any] = {**SMALL_POOL, **settings}
        service = self.start_pooler(**values)
        user, db = self.role_and_db()
        return service, self.dsn(service, user, db)

    def pinned(self, service: PgpoolService) -> list[tuple[str, ...]]:
        """The pinned clients' reasons, as the stats snapshot shows them (read from the
        test's thread: a snapshot only reads)."""
        snapshot = service.snapshot()
        counted = sum(pool.pinned for pool in snapshot.pools.values())
        assert counted == len(snapshot.pinned), (counted, snapshot.pinned)
        return [client.reasons for client in snapshot.pinned]

    @inlineCallbacks
    def test_servers_are_shared_between_transactions(self) -> Steps:
        """Six clients, two servers: each client's statements run, on at most two pids."""
        service, dsn = self.start()

        def run() -> set[int]:
            conns = [_open(dsn) for _ in range(6)]
            pids = set()
            try:
                for _ in range(5):
                    for conn in conns:
                        pids.add(_one(conn, "select pg_backend_pid()"))
            finally:
                for conn in conns:
                    conn.close()
            return pids

        pids = yield self.in_thread(run)
        self.assertLessEqual(len(pids), 2)
        self.assertGreaterEqual(len(pids), 1)

    @inlineCallbacks
    def test_a_transaction_keeps_one_server(self) -> Steps:
        service, dsn = self.start()

        def run() -> tuple[int, int]:
            a, b = _open(dsn), _open(dsn)
            try:
                a.execute("begin")
                first = _one(a, "select pg_backend_pid()")
                b.execute("begin")
                _one(b, "select 1")
                second = _one(a, "select pg_backend_pid()")
                a.execute("commit")
                b.execute("commit")
                return first, second
            finally:
                a.close()
                b.close()

        first, second = yield self.in_thread(run)
        self.assertEqual(first, second)

    def _pin_case(self, dsn: str, pin: str, check: str, clear: str, expect: Any) -> dict[str, Any]:
        """``pin`` on client a; b then holds the server a would have given back; ``check``
        on a must give ``expect``; after ``clear`` a's server is free for b again."""
        a, b = _open(dsn), _open(dsn)
        try:
            a_pid = _one(a, "select pg_backend_pid()")
            a.execute(pin)
            b.execute("begin")
            b_pid = _one(b, "select pg_backend_pid()")
            seen = _one(a, check)
            a_again = _one(a, "select pg_backend_pid()")
            b.execute("commit")
            a.execute(clear)
            b.execute("begin")
            b_after = _one(b, "select pg_backend_pid()")
            b.execute("commit")
            return {
                "seen": seen,
                "same_server": a_pid == a_again,
                "b_elsewhere": b_pid != a_pid,
                "b_takes_a_server_after": b_after == a_pid,
                "expect": expect,
            }
        finally:
            a.close()
            b.close()

    @inlineCallbacks
    def check_pin(self, pin: str, check: str, clear: str, expect: Any) -> Steps:
        service, dsn = self.start()
        result = yield self.in_thread(self._pin_case, dsn, pin, check, clear, expect)
        self.assertEqual(result["seen"], expect, result)
        self.assertTrue(result["same_server"], result)
        self.assertTrue(result["b_elsewhere"], result)
        self.assertTrue(result["b_takes_a_server_after"], f"not unpinned: {result}")

    def test_set_survives(self) -> Deferred[Any]:
        return self.check_pin("set work_mem = '7MB'", "show work_mem", "reset all", "7MB")

    def test_temp_table_survives(self) -> Deferred[Any]:
        return self.check_pin(
            "create temp table t as select 42 as x", "select x from t", "discard temp", 42
        )

    def test_advisory_lock_is_held(self) -> Deferred[Any]:
        # Checked from a: the lock is held by its own session (pg_locks of its pid).
        return self.check_pin(
            "select pg_advisory_lock(4242)",
            "select count(*) from pg_locks where locktype = 'advisory' "
            "and objid = 4242 and pid = pg_backend_pid()",
            "select pg_advisory_unlock_all()",
            1,
        )

    def test_hold_cursor_survives(self) -> Deferred[Any]:
        return self.check_pin(
            "declare c cursor with hold for select 7",
            "fetch c",
            "close all",
            7,
        )

    @inlineCallbacks
    def test_notify_reaches_the_client_that_listened(self) -> Steps:
        service, dsn = self.start()

        def run() -> tuple[list[str], list[tuple[str, ...]]]:
            a, b = _open(dsn), _open(dsn)
            try:
                a.execute("listen tx_channel")
                pins = self.pinned(service)
                b.execute("notify tx_channel, 'hello'")
                got = [n.payload for n in a.notifies(timeout=5, stop_after=1)]
                a.execute("unlisten *")
                return got, pins
            finally:
                a.close()
                b.close()

        got, pins = yield self.in_thread(run)
        self.assertEqual(got, ["hello"])
        self.assertEqual(pins, [("listen",)])
        self.assertEqual(self.pinned(service), [])

    @inlineCallbacks
    def test_replayed_settings_follow_the_client(self) -> Steps:
        """TimeZone and search_path are replayed, not pinned: the client keeps them on
        whichever server it lands, and the next client does not inherit them."""
        service, dsn = self.start()

        def run() -> dict[str, Any]:
            a, b = _open(dsn), _open(dsn)
            try:
                a.execute("set timezone to 'Pacific/Auckland'")
                a.execute("set search_path to tx_nowhere, public")
                pins = self.pinned(service)
                b.execute("begin")
                b_tz = _one(b, "show timezone")
                a_tz = _one(a, "show timezone")
                a_path = _one(a, "show search_path")
                b.execute("commit")
                return {"pins": pins, "a_tz": a_tz, "a_path": a_path, "b_tz": b_tz}
            finally:
                a.close()
                b.close()

        result = yield self.in_thread(run)
        self.assertEqual(result["pins"], [])
        self.assertEqual(result["a_tz"], "Pacific/Auckland")
        self.assertEqual(result["a_path"], "tx_nowhere, public")
        self.assertNotEqual(result["b_tz"], "Pacific/Auckland")

    @inlineCallbacks
    def test_prepared_statements_follow_the_client(self) -> Steps:
        """psycopg's automatic prepare (threshold 0: every statement) across servers."""
        service, dsn = self.start()

        def run() -> list[int]:
            conns = [_open(dsn, prepare_threshold=0) for _ in range(5)]
            results = []
            try:
                for round_ in range(6):
                    for i, conn in enumerate(conns):
                        row = conn.execute("select %s::int + 1", (i * 10 + round_,)).fetchone()
                        assert row is not None
                        results.append(row[0])
                for conn in conns:
                    conn.execute("deallocate all")
                    results.append(_one(conn, "select 5"))
            finally:
                for conn in conns:
                    conn.close()
            return results

        results = yield self.in_thread(run)
        expected = [i * 10 + r + 1 for r in range(6) for i in range(5)] + [5] * 5
        self.assertEqual(results, expected)

    @inlineCallbacks
    def test_a_clients_statement_is_invisible_to_another(self) -> Steps:
        service, dsn = self.start()
        user, db = dsn.split("user='")[1].split("'")[0], dsn.split("dbname='")[1].split("'")[0]

        def run() -> dict[str, str]:
            a = _open(dsn, prepare_threshold=0)
            try:
                a.execute("select 1 as secret_statement")
                name = a.execute("select 1").pgresult  # ensure a has prepared statements
                assert name is not None
                b = RawClient(service.port)
                try:
                    b.startup(user=user, database=db)
                    # Bind psycopg's first statement name on b's connection.
                    bind = m.message(b"B", b"\0_pg3_0\0\x00\x00\x00\x00\x00\x00")
                    b.send(bind + m.message(b"E", b"\0\x00\x00\x00\x00") + m.message(b"S"))
                    return error_fields(b.until_ready())
                finally:
                    b.close()
            finally:
                a.close()

        fields = yield self.in_thread(run)
        self.assertEqual(fields.get("C"), "26000", fields)

    @inlineCallbacks
    def test_cancel_reaches_the_running_statement(self) -> Steps:
        service, dsn = self.start()

        def run() -> str:
            a = _open(dsn)
            try:
                import threading

                timer = threading.Timer(0.5, a.cancel_safe)  # a.cancel() holds the GIL
                timer.start()
                try:
                    a.execute("select pg_sleep(20)")
                except psycopg.errors.QueryCanceled as e:
                    return e.sqlstate or ""
                finally:
                    timer.cancel()
                return "not cancelled"
            finally:
                a.close()

        code = yield self.in_thread(run)
        self.assertEqual(code, "57014")

    @inlineCallbacks
    def test_max_client_conn_refuses_with_53300(self) -> Steps:
        service, dsn = self.start(max_client_conn=2)

        def run() -> str:
            a, b = _open(dsn), _open(dsn)
            try:
                try:
                    _open(dsn).close()
                except psycopg.OperationalError as e:
                    return str(e)
                return "admitted"
            finally:
                a.close()
                b.close()

        text = yield self.in_thread(run)
        self.assertIn("max_client_conn", text)

    @inlineCallbacks
    def test_query_wait_timeout_tells_the_client(self) -> Steps:
        service, dsn = self.start(default_pool_size=1, query_wait_timeout=1.0)

        def run() -> str:
            a, b = _open(dsn), _open(dsn)
            try:
                a.execute("begin")
                _one(a, "select 1")
                try:
                    b.execute("select 1")
                except psycopg.OperationalError as e:
                    return str(e)
                return "served"
            finally:
                a.close()
                b.close()

        text = yield self.in_thread(run)
        self.assertIn("query_wait_timeout", text)

    @inlineCallbacks
    def test_servers_go_back_when_clients_leave(self) -> Steps:
        service, dsn = self.start()
        user = dsn.split("user='")[1].split("'")[0]

        def run() -> None:
            for _ in range(3):
                with _open(dsn) as conn:
                    conn.execute("select 1")

        yield self.in_thread(run)
        self.assertTrue((yield eventually(lambda: len(self.server_pids(user)) <= 2)))
        self.assertEqual(self.pinned(service), [])
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.close()

    @inlineCallbacks
    def test_min_pool_size_opens_servers_alone(self) -> Steps:
        service, dsn = self.start(min_pool_size=2, default_pool_size=3)
        user = dsn.split("user='")[1].split("'")[0]

        def run() -> None:
            with _open(dsn) as conn:
                conn.execute("select 1")

        yield self.in_thread(run)
        self.assertTrue((yield eventually(lambda: len(self.server_pids(user)) == 2)))

    @inlineCallbacks
    def test_server_idle_timeout_closes_idle_servers(self) -> Steps:
        service, dsn = self.start(server_idle_timeout=1.0)
        user = dsn.split("user='")[1].split("'")[0]

        def run() -> int:
            with _open(dsn) as conn:
                return int(_one(conn, "select pg_backend_pid()"))

        pid = yield self.in_thread(run)
        self.assertIn(pid, self.server_pids(user))
        self.assertTrue((yield eventually(lambda: not self.server_pids(user), timeout=15)))

    @inlineCallbacks
    def test_copy_both_ways(self) -> Steps:
        service, dsn = self.start()

        def run() -> tuple[int, bytes]:
            with _open(dsn) as conn:
                conn.execute("create table c (a int, b text)")
                with conn.cursor() as cur:
                    with cur.copy("copy c from stdin") as copy:
                        for number in range(1000):
                            copy.write_row((number, "x" * 50))
                    out = b""
                    with cur.copy("copy c to stdout") as copy:
                        for data in copy:
                            out += bytes(data)
                return int(_one(conn, "select count(*) from c")), out

        count, out = yield self.in_thread(run)
        self.assertEqual(count, 1000)
        self.assertEqual(out.count(b"\n"), 1000)

    @inlineCallbacks
    def test_clients_that_vanish_mid_transaction_give_their_places_back(self) -> Steps:
        """Servers of clients gone mid-transaction are closed (rolled back), and their
        places in default_pool_size serve the next clients."""
        service, dsn = self.start()

        def run() -> int:
            for _ in range(3):
                conn = _open(dsn)
                conn.execute("begin")
                conn.execute("select 1")
                conn.pgconn.finish()  # no Terminate, mid-transaction
            with _open(dsn) as a, _open(dsn) as b:
                a.execute("begin")
                b.execute("begin")
                got = _one(a, "select 1") + _one(b, "select 1")
                a.execute("commit")
                b.execute("commit")
                return int(got)

        self.assertEqual((yield self.in_thread(run)), 2)

    @inlineCallbacks
    def test_a_pinned_clients_server_is_reset_and_serves_the_next(self) -> Steps:
        """A client leaves while LISTEN pins it: its server is reset (DISCARD ALL) and
        serves the next client, who is not listening."""
        service, dsn = self.start(default_pool_size=1)

        def run() -> tuple[int, int, list[Any]]:
            with _open(dsn) as a:
                a.execute("listen tx_gone")
                first = int(_one(a, "select pg_backend_pid()"))
            with _open(dsn) as b:
                second = int(_one(b, "select pg_backend_pid()"))
                channels = b.execute("select pg_listening_channels()").fetchall()
            return first, second, channels

        first, second, channels = yield self.in_thread(run)
        self.assertEqual(first, second, "the server was kept")
        self.assertEqual(channels, [])


class TransactionPoolingCLoopTests(TransactionPoolingTests):
    """The same, with ``twistd pgpool``'s C loop: simple transactions run on the lane."""

    c_loop = True
