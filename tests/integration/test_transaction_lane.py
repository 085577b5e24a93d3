"""Transaction pooling on the C loop's lane (engine/_txlane.c) with a real PostgreSQL.

Simple Queries that leave nothing in a server session run on the lane without Python;
these tests prove the lane was used (its counters), that clients get exactly the
answers a direct connection gives, and that what the lane does not know (an answer it
cannot walk, a client still being written to, a cancel, a client that vanishes) is
handed to Python with nothing lost.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from tests.integration.harness import PoolerTestCase, RawClient, eventually, send_cancel
from tests.integration.test_transaction import SMALL_POOL

Steps = Generator[Deferred[Any], Any, None]

DATA_ROW = ord("D")


def _rows(messages: list[tuple[int, bytes]]) -> list[list[str]]:
    """The DataRows of an answer, as text columns."""
    rows = []
    for kind, body in messages:
        if kind != DATA_ROW:
            continue
        count = struct.unpack_from("!h", body, 0)[0]
        pos, row = 2, []
        for _ in range(count):
            size = struct.unpack_from("!i", body, pos)[0]
            pos += 4
            row.append(body[pos : pos + size].decode())
            pos += size
        rows.append(row)
    return rows


def _errors(messages: list[tuple[int, bytes]]) -> list[dict[str, str]]:
    return [m.parse_fields(body) for kind, body in messages if kind == m.ERROR_RESPONSE]


class TransactionLaneTests(PoolerTestCase):
    c_loop = True

    def start(self, **settings: Any) -> tuple[PgpoolService, str, str]:
        values: dict[str, Any] = {**SMALL_POOL, **settings}
        service = self.start_pooler(**values)
        user, db = self.role_and_db()
        return service, user, db

    def client(self, service: PgpoolService, user: str, db: str, **params: str) -> RawClient:
        client = RawClient(service.port)
        answer = client.startup(user=user, database=db, **params)
        assert not _errors(answer), answer
        return client

    def lane_counts(self, service: PgpoolService) -> tuple[int, int, int]:
        """(statements the lanes sent, chunks handed to Python, transactions adopted)."""
        lanes = service.pool.leases.lanes.values()
        self.assertTrue(lanes, "no lane was made")
        hits = sum(lane.counts[0] for lane in lanes)
        misses = sum(lane.counts[1] for lane in lanes)
        adopted = sum(lane.counts[2] for lane in lanes)
        return hits, misses, adopted

    @inlineCallbacks
    def test_simple_transactions_run_on_the_lane(self) -> Steps:
        """Four clients, two servers, 50 statements each: every answer is the client's
        own, the lane ran nearly all of them, and no more than two servers served."""
        service, user, db = self.start()

        def run() -> set[str]:
            clients = [self.client(service, user, db) for _ in range(4)]
            pids = set()
            try:
                for i in range(50):
                    for n, c in enumerate(clients):
                        rows = _rows(c.query(f"select pg_backend_pid(), {i * 10 + n}"))
                        assert rows[0][1] == str(i * 10 + n), rows
                        pids.add(rows[0][0])
            finally:
                for c in clients:
                    c.close()
            return pids

        pids = yield self.in_thread(run)
        self.assertLessEqual(len(pids), 2)
        hits, misses, _ = self.lane_counts(service)
        self.assertGreaterEqual(hits, 190)  # the first statement of a shape is Python's
        self.assertGreater(misses, 0)  # that first one, and each Terminate

    @inlineCallbacks
    def test_clients_wait_on_the_lane_in_turn(self) -> Steps:
        """Eight threads on two servers at once: each statement answered rightly."""
        service, user, db = self.start()
        failures: list[str] = []

        def one(n: int) -> None:
            c = self.client(service, user, db)
            try:
                for i in range(100):
                    rows = _rows(c.query(f"select {n}, {i}"))
                    if rows != [[str(n), str(i)]]:
                        failures.append(f"{n}/{i}: {rows}")
            finally:
                c.close()

        def run() -> None:
            threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        yield self.in_thread(run)
        self.assertEqual(failures, [])
        hits, _, _ = self.lane_counts(service)
        self.assertGreaterEqual(hits, 700)
        stats = list(service.pool.leases.stats().values())
        self.assertLessEqual(sum(s.active + s.idle for s in stats), 2)

    @inlineCallbacks
    def test_application_names_stay_the_clients_own(self) -> Steps:
        """The lane pairs a client only with a server set to its application_name."""
        service, user, db = self.start()

        def run() -> list[str]:
            a = self.client(service, user, db, application_name="alpha")
            b = self.client(service, user, db, application_name="beta")
            seen = []
            try:
                for _ in range(20):
                    seen.append(_rows(a.query("select current_setting('application_name')"))[0][0])
                    seen.append(_rows(b.query("select current_setting('application_name')"))[0][0])
            finally:
                a.close()
                b.close()
            return seen

        seen = yield self.in_thread(run)
        self.assertEqual(seen, ["alpha", "beta"] * 20)

    @inlineCallbacks
    def test_an_answer_the_lane_cannot_walk_goes_to_python(self) -> Steps:
        """COPY TO STDOUT's answer (CopyOutResponse, CopyData) is adopted by the
        session's stream mid-answer; the client gets it all, in order."""
        service, user, db = self.start()

        def run() -> list[bytes]:
            c = self.client(service, user, db)
            out = []
            try:
                for i in range(3):
                    answer = c.query(
                        f"copy (select g from generate_series(1, {i + 3}) g) to stdout"
                    )
                    out.append(b"".join(body for kind, body in answer if kind == ord("d")))
            finally:
                c.close()
            return out

        out = yield self.in_thread(run)
        self.assertEqual(out, [b"1\n2\n3\n", b"1\n2\n3\n4\n", b"1\n2\n3\n4\n5\n"])
        _, _, adopted = self.lane_counts(service)
        self.assertGreaterEqual(adopted, 1)

    @inlineCallbacks
    def test_a_large_result_reaches_the_client(self) -> Steps:
        """Rows faster than the client reads: the lane hands the answer to Twisted's flow
        control, and every row arrives."""
        service, user, db = self.start()

        def run() -> list[int]:
            c = self.client(service, user, db)
            sizes = []
            try:
                for i in range(3):
                    rows = _rows(
                        c.query(f"select repeat('x', 1000 + {i}) from generate_series(1, 5000)")
                    )
                    sizes.append(sum(len(r[0]) for r in rows))
            finally:
                c.close()
            return sizes

        sizes = yield self.in_thread(run)
        self.assertEqual(sizes, [5000 * 1000, 5000 * 1001, 5000 * 1002])

    @inlineCallbacks
    def test_cancel_reaches_a_statement_on_the_lane(self) -> Steps:
        service, user, db = self.start()

        def run() -> list[dict[str, str]]:
            c = self.client(service, user, db)
            try:
                c.query("select pg_sleep(0)")  # the shape, known to the lane from now on
                c.send(m.query("select pg_sleep(30)"))
                timer = threading.Timer(0.5, send_cancel, (service.port, c.pid, c.key))
                timer.start()
                answer = c.until_ready()
                timer.join()
                return _errors(answer)
            finally:
                c.close()

        errors = yield self.in_thread(run)
        self.assertEqual([e.get("C") for e in errors], ["57014"])

    @inlineCallbacks
    def test_a_client_that_vanishes_mid_transaction(self) -> Steps:
        """Its server is closed (it may still run the statement), its place is free
        again, and the other clients go on."""
        service, user, db = self.start(default_pool_size=1)

        def run() -> list[list[str]]:
            a = self.client(service, user, db)
            a.query("select pg_sleep(0)")
            a.send(m.query("select pg_sleep(2)"))
            a.close(terminate=False)
            b = self.client(service, user, db)
            try:
                return _rows(b.query("select 42"))
            finally:
                b.close()

        rows = yield self.in_thread(run)
        self.assertEqual(rows, [["42"]])

        def settled() -> bool:
            stats = list(service.pool.leases.stats().values())
            return sum(s.active for s in stats) == 0 and sum(s.waiting for s in stats) == 0

        self.assertTrue((yield eventually(settled)))

    @inlineCallbacks
    def test_transaction_blocks_run_on_the_lane(self) -> Steps:
        """BEGIN ... COMMIT of simple statements: one server for the block, what commits
        is there, what rolls back is not, and a failed block refuses until ROLLBACK."""
        service, user, db = self.start()

        def run() -> tuple[list[str], list[str], set[str]]:
            a = self.client(service, user, db)
            b = self.client(service, user, db)
            pids: set[str] = set()
            codes: list[str] = []
            try:
                a.query("create table t (n int)")
                for i in range(30):
                    for c in (a, b):
                        c.query("begin")
                        pid = _rows(c.query("select pg_backend_pid()"))[0][0]
                        c.query(f"insert into t values ({i})")
                        again = _rows(c.query("select pg_backend_pid()"))[0][0]
                        assert pid == again, (pid, again)
                        pids.add(pid)
                        c.query("commit" if c is a else "rollback")
                a.query("begin")
                codes += [e["C"] for e in _errors(a.query("select 1/0"))]
                codes += [e["C"] for e in _errors(a.query("select 1"))]
                a.query("rollback")
                count = _rows(b.query("select count(*), sum(n) from t"))[0]
            finally:
                a.close()
                b.close()
            return count, codes, pids

        count, codes, pids = yield self.in_thread(run)
        self.assertEqual(count, ["30", str(sum(range(30)))])  # a's commits, not b's
        self.assertEqual(codes, ["22012", "25P02"])
        self.assertLessEqual(len(pids), 2)
        hits, _, _ = self.lane_counts(service)
        self.assertGreaterEqual(hits, 50)

    @inlineCallbacks
    def test_a_pinned_client_keeps_its_server_on_the_lane(self) -> Steps:
        """A SET pins a client: its simple statements then run on the lane on its own
        server, which nobody else gets, and the setting holds throughout."""
        service, user, db = self.start()

        def run() -> tuple[set[str], set[str], list[str]]:
            a = self.client(service, user, db)
            b = self.client(service, user, db)
            a_pids: set[str] = set()
            b_pids: set[str] = set()
            seen: list[str] = []
            try:
                a.query("set statement_timeout = '42s'")
                for _ in range(30):
                    rows = _rows(
                        a.query("select pg_backend_pid(), current_setting('statement_timeout')")
                    )
                    a_pids.add(rows[0][0])
                    seen.append(rows[0][1])
                    b_pids.add(_rows(b.query("select pg_backend_pid(), 1"))[0][0])
            finally:
                a.close()
                b.close()
            return a_pids, b_pids, seen

        before = self.lane_counts(service)[0] if service.pool.leases.lanes else 0
        a_pids, b_pids, seen = yield self.in_thread(run)
        self.assertEqual(len(a_pids), 1)
        self.assertFalse(a_pids & b_pids)
        self.assertEqual(set(seen), {"42s"})
        hits, _, _ = self.lane_counts(service)
        self.assertGreaterEqual(hits - before, 50)  # a's own, held, and b's

    @inlineCallbacks
    def test_a_notification_reaches_a_listener_held_on_the_lane(self) -> Steps:
        service, user, db = self.start()

        def run() -> list[bytes]:
            a = self.client(service, user, db)
            b = self.client(service, user, db)
            try:
                a.query("listen lane_channel")
                for i in range(5):
                    a.query(f"select {i}")  # on the lane, on a's own server
                b.query("notify lane_channel, 'hello'")
                answer = a.query("select 99")
                return [body for kind, body in answer if kind == ord("A")]
            finally:
                a.close()
                b.close()

        notes = yield self.in_thread(run)
        self.assertEqual(len(notes), 1)
        self.assertIn(b"lane_channel\0hello\0", notes[0])

    @inlineCallbacks
    def test_a_pinned_client_that_vanishes_leaves_its_server_reset(self) -> Steps:
        """A pinned client whose server the lane holds drops its connection without a
        Terminate: the server is reset (reset_query_list) and serves the next client,
        which does not inherit the setting."""
        service, user, db = self.start(default_pool_size=1)

        def run() -> tuple[str, str, str, str]:
            a = self.client(service, user, db)
            a.query("set statement_timeout = '42s'")
            pid, seen = _rows(
                a.query("select pg_backend_pid(), current_setting('statement_timeout')")
            )[0]
            a.close(terminate=False)
            b = self.client(service, user, db)
            try:
                b_pid, b_seen = _rows(
                    b.query("select pg_backend_pid(), current_setting('statement_timeout')")
                )[0]
            finally:
                b.close()
            return pid, seen, b_pid, b_seen

        pid, seen, b_pid, b_seen = yield self.in_thread(run)
        self.assertEqual(seen, "42s")
        self.assertEqual(b_pid, pid)  # reset and reused, not closed
        self.assertEqual(b_seen, "0")

    @inlineCallbacks
    def test_the_snapshot_shows_a_lane_transaction_active(self) -> Steps:
        """While the lane runs a statement, the stats snapshot counts its server as
        active, not idle (it sits parked while the lane lends it)."""
        service, user, db = self.start()
        c = yield self.in_thread(self.client, service, user, db)
        self.addCleanup(c.close)
        yield self.in_thread(c.query, "select pg_sleep(0)")  # the shape, known from now on

        def servers(state: str) -> int:
            snapshot = service.snapshot()
            return sum(
                states[state]
                for pool in snapshot.pools.values()
                for states in pool.servers.values()
            )

        self.assertEqual(servers("active"), 0)
        c.send(m.query("select pg_sleep(1)"))
        self.assertTrue((yield eventually(lambda: servers("active") == 1)))
        self.assertEqual(servers("idle"), 0)
        answer = yield self.in_thread(c.until_ready)
        self.assertEqual(_errors(answer), [])
        self.assertEqual(servers("active"), 0)
        self.assertEqual(servers("idle"), 1)
