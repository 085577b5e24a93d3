"""Routing through a real primary and a real streaming replica (pg_basebackup -R).

Every test runs the pooler in front of ``tests.support.shared_cluster``: node 0 is the
primary, node 1 the replica.  Where a statement ran is read from the server itself
(``SHOW port``, ``inet_server_port()``), never from the pooler's own account.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from typing import Any

import psycopg
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.engine import fastpoll
from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.service import PgpoolService
from pgpool_tw.session.routed import FAST_READ, FAST_WRITE
from tests.integration.harness import RawClient, error_fields, eventually, send_cancel
from tests.support import shared_cluster, skip_unless_postgres, unique_name, wait_replica_caught_up


def on_the_c_loop(case: unittest.TestCase) -> None:
    """Run ``case`` with the C iteration on the reactor (as under ``twistd pgpool``)."""
    if not fastpoll.c_loop_available():
        raise unittest.SkipTest("pgpool_tw.engine._speedups is not built or turned off")
    case.assertTrue(fastpoll.install(reactor))
    case.addCleanup(fastpoll.uninstall, reactor)


def long_read_by_the_router(service: PgpoolService, user: str, db: str) -> RawClient:
    """A raw client whose long read the router has sent (its shape was classified by a
    short one first) and is waiting on, half a second in."""
    counted = "SELECT count(*) FROM generate_series(1, {})"
    client = RawClient(service.port)
    client.startup(user=user, database=db)
    client.query(counted.format(1))
    client.send(m.query(counted.format(2000000000)))
    time.sleep(0.5)
    return client


class RoutingCase(unittest.TestCase):
    timeout = 180

    def setUp(self) -> None:
        skip_unless_postgres()
        self.primary, self.replica = shared_cluster()

    def start_pooler(
        self,
        weights: tuple[float, float] = (0.0, 1.0),
        replica_port: int = 0,
        replica_first: bool = False,
        **settings: Any,
    ) -> PgpoolService:
        socket_dir = tempfile.mkdtemp(prefix="pgtw-")
        self.addCleanup(shutil.rmtree, socket_dir, True)
        primary, replica = self.primary, self.replica
        if replica_first:
            primary, replica = replica, primary
        base = Config(
            listen_addresses=("127.0.0.1",),
            port=0,
            socket_dirs=(socket_dir,),
            logdir=socket_dir,
            backends=(
                BackendNode(0, primary.host, primary.port, weight=weights[0]),
                BackendNode(1, replica.host, replica_port or replica.port, weight=weights[1]),
            ),
            sr_check_period=0,
            sr_check_user="postgres",
        )
        service = PgpoolService(dataclasses.replace(base, **settings), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def database(self) -> tuple[str, str]:
        """A role and database made on the primary and replayed by the replica."""
        user, db = unique_name("u"), unique_name("d")
        self.primary.create_role(user)
        self.primary.create_database(db, owner=user)
        wait_replica_caught_up()
        return user, db

    def dsn(self, service: PgpoolService, user: str, db: str) -> str:
        return f"host=127.0.0.1 port={service.port} user={user} dbname={db}"

    def _port(self, conn: psycopg.Connection[Any], sql: str = "SHOW port") -> int:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]

    def _replica_again(self, conn: psycopg.Connection[Any]) -> int:
        """Read until a read lands on the replica again (read-your-writes waits for the
        replica to replay the session's commit); the port of the last read."""
        port = 0
        for _ in range(200):
            port = self._port(conn)
            if port == self.replica.port:
                break
            time.sleep(0.05)
        return port


def _thread(fn: Any, *args: Any) -> Any:
    from twisted.internet import threads

    return threads.deferToThread(fn, *args)


class ReadsAndWrites(RoutingCase):
    @defer.inlineCallbacks
    def test_reads_go_to_the_replica_writes_to_the_primary(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()
        primary, replica = self.primary, self.replica

        def work() -> dict[str, Any]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                read_port = conn.execute("SELECT inet_server_port()").fetchone()[0]
                conn.execute("CREATE TABLE t (id int)")
                conn.execute("INSERT INTO t VALUES (1)")
                seen = conn.execute("SELECT count(*) FROM t").fetchone()[0]
                return {"read": int(read_port), "seen": seen}

        got = yield _thread(work)
        self.assertEqual(got["read"], replica.port)
        self.assertEqual(got["seen"], 1)
        self.assertNotEqual(primary.port, replica.port)

    @defer.inlineCallbacks
    def test_weights_decide_the_load_balancing_node(self) -> Any:
        """Weight 0 never reads; two nodes with weight both read over many sessions."""
        user, db = self.database()
        seen: dict[tuple[float, float], set[int]] = {}
        for weights in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
            service = self.start_pooler(weights)

            def ports(service: PgpoolService = service) -> set[int]:
                found = set()
                for _ in range(40):
                    with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                        found.add(self._port(conn))
                return found

            seen[weights] = yield _thread(ports)
            yield service.stopService()
        self.assertEqual(seen[(1.0, 0.0)], {self.primary.port})
        self.assertEqual(seen[(0.0, 1.0)], {self.replica.port})
        # Each of 40 sessions picks node 1 with probability 1/2: both appear (1 - 2**-39).
        self.assertEqual(seen[(1.0, 1.0)], {self.primary.port, self.replica.port})

    @defer.inlineCallbacks
    def test_statements_a_standby_refuses_go_to_the_primary(self) -> Any:
        """FOR UPDATE, nextval, temp tables and writes fail on a standby: they must not go there."""
        service = self.start_pooler()
        user, db = self.database()
        self.primary.psql(
            "CREATE TABLE t (id int); INSERT INTO t VALUES (1); CREATE SEQUENCE s;",
            dbname=db,
            user=user,
        )
        wait_replica_caught_up()

        def work() -> list[Any]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                return [
                    conn.execute("SELECT id FROM t FOR UPDATE").fetchall(),
                    conn.execute("SELECT nextval('s')").fetchone(),
                    conn.execute("CREATE TEMP TABLE tt AS SELECT 5 AS v").rowcount,
                    conn.execute("SELECT v FROM tt").fetchall(),
                    conn.execute("UPDATE t SET id = 2").rowcount,
                    self._replica_again(conn),
                ]

        got = yield _thread(work)
        self.assertEqual(got[:2], [[(1,)], (1,)])
        self.assertEqual(got[3:5], [[(5,)], 1])
        self.assertEqual(got[5], self.replica.port)  # reads still balanced afterwards

    @defer.inlineCallbacks
    def test_session_state_reaches_both_nodes(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()

        def work() -> tuple[Any, ...]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("SET statement_timeout = '1234ms'")
                on_replica = conn.execute("SHOW statement_timeout").fetchone()
                port = self._port(conn)
                conn.execute("CREATE TABLE st (v text)")
                conn.execute("INSERT INTO st VALUES (current_setting('statement_timeout'))")
                on_primary = conn.execute("SELECT v FROM st").fetchone()
                return on_replica, port, on_primary

        on_replica, port, on_primary = yield _thread(work)
        self.assertEqual(port, self.replica.port)
        self.assertEqual(on_replica, ("1234ms",))
        self.assertEqual(on_primary, ("1234ms",))

    @defer.inlineCallbacks
    def test_a_transaction_reads_from_the_primary_after_its_first_write(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()
        self.primary.psql("CREATE TABLE t (id int)", dbname=db, user=user)
        wait_replica_caught_up()

        def work() -> list[int]:
            with psycopg.connect(self.dsn(service, user, db)) as conn:  # BEGIN implicitly
                before = self._port(conn)
                conn.execute("INSERT INTO t VALUES (1)")
                after = self._port(conn)
                count = conn.execute("SELECT count(*) FROM t").fetchone()[0]  # type: ignore[index]
                conn.commit()
                conn.autocommit = True
                later = self._replica_again(conn)
                return [before, after, count, later]

        before, after, count, later = yield _thread(work)
        self.assertEqual((before, after, count), (self.replica.port, self.primary.port, 1))
        self.assertEqual(later, self.replica.port)

    @defer.inlineCallbacks
    def test_extended_and_prepared_statements_are_routed(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()
        self.primary.psql(
            "CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'one'), (2, 'two')",
            dbname=db,
            user=user,
        )
        wait_replica_caught_up()

        def work() -> list[Any]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                out: list[Any] = []
                for i in range(8):  # psycopg prepares a statement after 5 uses
                    out.append(
                        conn.execute("SELECT v FROM t WHERE id = %s", (i % 2 + 1,)).fetchone()
                    )
                out.append(self._port(conn))
                conn.execute("INSERT INTO t VALUES (%s, %s)", (3, "three"), prepare=True)
                conn.execute("INSERT INTO t VALUES (%s, %s)", (4, "four"), prepare=True)
                out.append(conn.execute("SELECT count(*) FROM t", prepare=True).fetchone())
                with conn.transaction():
                    out.append(conn.execute("SELECT v FROM t WHERE id = %s", (1,)).fetchone())
                    conn.execute("UPDATE t SET v = %s WHERE id = %s", ("uno", 1))
                    out.append(conn.execute("SELECT v FROM t WHERE id = %s", (1,)).fetchone())
                with conn.pipeline():
                    a = conn.execute("SELECT v FROM t WHERE id = %s", (2,))
                    b = conn.execute("UPDATE t SET v = %s WHERE id = %s", ("dos", 2))
                    c = conn.execute("SELECT count(*) FROM t WHERE v = %s", ("dos",))
                out += [a.fetchone(), b.rowcount, c.fetchone()]
                return out

        out = yield _thread(work)
        self.assertEqual(out[:8], [("one",), ("two",)] * 4)
        self.assertEqual(out[8], self.replica.port)
        self.assertEqual(out[9:], [(4,), ("one",), ("uno",), ("two",), 1, (1,)])

    @defer.inlineCallbacks
    def test_a_failed_read_aborts_the_transaction_as_one_server_would(self) -> Any:
        """A read that fails on the replica only (a table it has not replayed yet): later
        writes are refused and COMMIT rolls back, as if the one server had failed it."""
        service = self.start_pooler(disable_load_balance_on_write="off", read_your_writes=False)
        user, db = self.database()
        self.primary.psql("CREATE TABLE t (id int)", dbname=db, user=user)
        wait_replica_caught_up()
        self.replica.psql("SELECT pg_wal_replay_pause()")
        self.addCleanup(self.replica.psql, "SELECT pg_wal_replay_resume()")
        self.primary.psql("CREATE TABLE fresh (id int)", dbname=db, user=user)

        def work() -> list[Any]:
            out: list[Any] = []
            with psycopg.connect(self.dsn(service, user, db)) as conn:
                conn.execute("INSERT INTO t VALUES (1)")
                try:
                    conn.execute("SELECT id FROM fresh")  # the replica: no such table yet
                except psycopg.errors.UndefinedTable:
                    out.append("42P01")
                try:
                    conn.execute("INSERT INTO t VALUES (2)")
                except psycopg.errors.InFailedSqlTransaction:
                    out.append("25P02")
                out.append(conn.info.transaction_status.name)
                cur = conn.execute("COMMIT")
                out.append(cur.statusmessage)
            return out

        out = yield _thread(work)
        self.assertEqual(out, ["42P01", "25P02", "INERROR", "ROLLBACK"])
        self.assertEqual(self.primary.psql("SELECT count(*) FROM t", dbname=db).strip(), "0")

    @defer.inlineCallbacks
    def test_show_pool_nodes(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()

        def work() -> tuple[list[str], list[Any]]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                self._port(conn)
                cur = conn.execute("SHOW pool_nodes")
                names = [column.name for column in cur.description or ()]
                return names, cur.fetchall()

        names, rows = yield _thread(work)
        self.assertEqual(
            names[:6], ["node_id", "hostname", "port", "status", "pg_status", "lb_weight"]
        )
        self.assertEqual(len(names), 14)
        self.assertEqual([row[0] for row in rows], ["0", "1"])
        self.assertEqual([row[2] for row in rows], [str(self.primary.port), str(self.replica.port)])
        self.assertEqual([row[9] for row in rows], ["false", "true"])  # load_balance_node
        self.assertEqual(rows[1][5], "1.000000")
        self.assertGreaterEqual(int(rows[1][8]), 1)  # select_cnt counts this session's read


class ReadYourWrites(RoutingCase):
    def _pause(self) -> None:
        self.replica.psql("SELECT pg_wal_replay_pause()")
        self.addCleanup(self.replica.psql, "SELECT pg_wal_replay_resume()")

    @defer.inlineCallbacks
    def test_a_session_reads_its_own_commit_while_the_replica_lags(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()
        self.primary.psql("CREATE TABLE t (id int)", dbname=db, user=user)
        wait_replica_caught_up()
        self._pause()

        def work() -> list[Any]:
            dsn = self.dsn(service, user, db)
            with psycopg.connect(dsn, autocommit=True) as writer:
                writer.execute("INSERT INTO t VALUES (1)")
                mine = writer.execute("SELECT count(*) FROM t").fetchone()
                with psycopg.connect(dsn, autocommit=True) as other:
                    theirs = other.execute("SELECT count(*) FROM t").fetchone()
                    port = other.execute("SHOW port").fetchone()
            return [mine, theirs, port]

        mine, theirs, port = yield _thread(work)
        self.assertEqual(mine, (1,))  # its own write, from the primary
        self.assertEqual(theirs, (0,))  # another session still reads the paused replica
        self.assertEqual(port, (str(self.replica.port),))

    @defer.inlineCallbacks
    def test_read_your_writes_off_reads_the_lagging_replica(self) -> Any:
        service = self.start_pooler(read_your_writes=False)
        user, db = self.database()
        self.primary.psql("CREATE TABLE t (id int)", dbname=db, user=user)
        wait_replica_caught_up()
        self._pause()

        def work() -> Any:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("INSERT INTO t VALUES (1)")
                return conn.execute("SELECT count(*) FROM t").fetchone()

        self.assertEqual((yield _thread(work)), (0,))


class LoadBalancingNodeTrouble(RoutingCase):
    @defer.inlineCallbacks
    def test_an_unreachable_node_leaves_the_session_on_the_primary(self) -> Any:
        from pgpool_tw_dev.devdb import free_port

        service = self.start_pooler(replica_port=free_port())
        user, db = self.database()

        def work() -> list[Any]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                return [self._port(conn), conn.execute("SELECT 1").fetchone()]

        self.assertEqual((yield _thread(work)), [self.primary.port, (1,)])

    @defer.inlineCallbacks
    def test_a_lost_load_balancing_server_costs_only_the_balancing(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()

        def work() -> list[Any]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                first = self._port(conn)
                self.replica.psql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :'u'",
                    variables={"u": user},
                )
                time.sleep(0.5)  # the pooler notices the close between statements
                return [first, self._port(conn), conn.execute("SELECT 2").fetchone()]

        self.assertEqual((yield _thread(work)), [self.replica.port, self.primary.port, (2,)])


class Pgbench(RoutingCase):
    def _pgbench(self, service: PgpoolService, user: str, db: str, *args: str) -> str:
        import subprocess

        argv = ["pgbench", "-h", "127.0.0.1", "-p", str(service.port), "-U", user, *args, db]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        return proc.stdout

    @defer.inlineCallbacks
    def test_select_only_and_tpcb_run_without_failures(self) -> Any:
        service = self.start_pooler((1.0, 1.0))
        user, db = self.database()
        yield _thread(self._pgbench, service, user, db, "-i", "-s", "1", "-q")
        wait_replica_caught_up()
        for args in (("-S",), ("-S", "-M", "prepared"), ("-M", "extended"), ()):
            out = yield _thread(self._pgbench, service, user, db, "-T", "3", "-c", "4", *args)
            self.assertIn("number of failed transactions: 0", out)
            self.assertRegex(out, r"number of transactions actually processed: [1-9]")


class PgbenchOnTheCLoop(Pgbench):
    """pgbench through the C loop: plain statements of a known shape are routed by the
    router (engine/_route.c) without Python; the same runs end without failures."""

    def setUp(self) -> None:
        super().setUp()
        on_the_c_loop(self)

    @defer.inlineCallbacks
    def test_select_only_and_tpcb_run_without_failures(self) -> Any:
        yield super().test_select_only_and_tpcb_run_without_failures()
        self.assertEqual(fastpoll._router_fds, {})

    @defer.inlineCallbacks
    def test_the_router_learns_and_routes_pgbench_shapes(self) -> Any:
        service = self.start_pooler((0.0, 1.0))
        user, db = self.database()
        yield _thread(self._pgbench, service, user, db, "-i", "-s", "1", "-q")
        wait_replica_caught_up()
        out = yield _thread(self._pgbench, service, user, db, "-t", "200", "-c", "2", "-S")
        self.assertIn("number of failed transactions: 0", out)
        out = yield _thread(self._pgbench, service, user, db, "-t", "100", "-c", "2")
        self.assertIn("number of failed transactions: 0", out)
        assert speedups is not None
        shapes = service.factory.fast_shapes
        select = speedups.shape_key(b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
        update = speedups.shape_key(
            b"UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1;"
        )
        self.assertEqual((shapes.get(select), shapes.get(update)), (FAST_READ, FAST_WRITE))
        # Every -S read reached the replica (weight 0 on the primary), counted in C.
        counts = service.factory.select_counts
        self.assertGreaterEqual(counts.get(1, 0), 400, counts)
        self.assertEqual(fastpoll._router_fds, {})


class PerStatement(RoutingCase):
    @defer.inlineCallbacks
    def test_statement_level_load_balance_spreads_one_sessions_reads(self) -> Any:
        service = self.start_pooler((1.0, 1.0), statement_level_load_balance=True)
        user, db = self.database()

        def work() -> set[int]:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                return {self._port(conn) for _ in range(60)}

        # Each read picks node 1 with probability 1/2: both appear (1 - 2**-59).
        self.assertEqual((yield _thread(work)), {self.primary.port, self.replica.port})

    @defer.inlineCallbacks
    def test_log_per_node_statement_names_the_node(self) -> Any:
        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "statement" in event.get("log_format", ""):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        service = self.start_pooler(log_per_node_statement=True)
        user, db = self.database()

        def work() -> None:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("SHOW port")
                conn.execute("CREATE TABLE logged (id int)")

        yield _thread(work)
        self.assertIn("DB node id: 1", "".join(line for line in lines if "SHOW port" in line))
        self.assertIn("DB node id: 0", "".join(line for line in lines if "CREATE TABLE" in line))


class Lagging(RoutingCase):
    @defer.inlineCallbacks
    def test_a_replica_past_delay_threshold_takes_no_reads(self) -> Any:
        service = self.start_pooler(delay_threshold=1)
        user, db = self.database()
        self.primary.psql("CREATE TABLE t (id int)", dbname=db, user=user)
        wait_replica_caught_up()
        check = service.sr_check
        assert check is not None
        yield check.check_now()

        def port() -> int:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                return self._port(conn)

        self.assertEqual((yield _thread(port)), self.replica.port)
        self.replica.psql("SELECT pg_wal_replay_pause()")
        self.addCleanup(self.replica.psql, "SELECT pg_wal_replay_resume()")
        self.primary.psql("INSERT INTO t SELECT generate_series(1, 1000)", dbname=db)
        self.primary.psql("SELECT pg_switch_wal()")
        decision = yield check.check_now()
        self.assertTrue(service.factory.cluster[1].lagging, decision)
        self.assertEqual((yield _thread(port)), self.primary.port)
        self.replica.psql("SELECT pg_wal_replay_resume()")
        wait_replica_caught_up()
        yield check.check_now()
        self.assertFalse(service.factory.cluster[1].lagging)
        self.assertEqual((yield _thread(port)), self.replica.port)


class ReplicaFirst(RoutingCase):
    @defer.inlineCallbacks
    def test_the_first_session_writes_to_the_detected_primary(self) -> Any:
        """Node 0 is the replica: the first client waits for the check and writes to node 1."""
        user, db = self.database()
        # The client below may well arrive before the first check.
        service = self.start_pooler((1.0, 1.0), replica_first=True, sr_check_period=10)

        def work() -> Any:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("CREATE TABLE first (id int)")
                return conn.execute("SELECT inet_server_port() FROM pg_class LIMIT 1").fetchone()

        self.assertEqual((yield _thread(work)), (self.primary.port,))
        primary = service.factory.cluster.primary
        assert primary is not None
        self.assertEqual(primary.index, 1)


class OnTheCLoop(ReadsAndWrites):
    """The same, with the C iteration running the reactor (as under ``twistd pgpool``):
    a routed session's three sockets are its router's (engine/_route.c)."""

    def setUp(self) -> None:
        super().setUp()
        on_the_c_loop(self)

    @defer.inlineCallbacks
    def test_the_c_loop_reads_all_three_sockets(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()
        registered: list[int] = []

        def work() -> int:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                port = self._port(conn)
                registered.append(len(fastpoll._router_fds))
                return port

        self.assertEqual((yield _thread(work)), self.replica.port)
        self.assertEqual(registered, [3])  # the client, the primary, the replica
        # All handed back once the session ends.
        self.assertTrue((yield eventually(lambda: not fastpoll._router_fds)), fastpoll._router_fds)


class Cancel(RoutingCase):
    @defer.inlineCallbacks
    def test_a_cancel_reaches_the_node_the_session_waits_on(self) -> Any:
        """With the raw client: psycopg's cancel holds the GIL while it waits, which an
        in-process pooler cannot answer."""
        import threading

        service = self.start_pooler()
        user, db = self.database()

        def work() -> list[Any]:
            client = RawClient(service.port)
            client.startup(user=user, database=db)
            out: list[Any] = []
            for sql in (
                "SELECT count(*) FROM generate_series(1, 2000000000)",  # the replica
                # The primary (and no write, so the next read may go to the replica).
                "/*NO LOAD BALANCE*/ SELECT count(*) FROM generate_series(1, 2000000000)",
            ):
                timer = threading.Timer(0.5, send_cancel, (service.port, client.pid, client.key))
                timer.start()
                out.append(error_fields(client.query(sql)).get("C"))
                timer.join()
                rows = [
                    body
                    for kind, body in client.query("SELECT inet_server_port()")
                    if kind == ord("D")
                ]
                out.append(int(rows[0][6:]))  # one column: count, length, the text
            client.close()
            return out

        out = yield _thread(work)
        self.assertEqual(out, ["57014", self.replica.port, "57014", self.replica.port])


class CancelOnTheCLoop(Cancel):
    """The same on the C loop, and a cancel of a statement the router sent itself."""

    def setUp(self) -> None:
        super().setUp()
        on_the_c_loop(self)

    @defer.inlineCallbacks
    def test_a_cancel_reaches_a_statement_the_router_sent(self) -> Any:
        service = self.start_pooler()
        user, db = self.database()

        def work() -> list[Any]:
            client = long_read_by_the_router(service, user, db)
            # The router sent it, and waits on the replica's leg (1); Python never saw it.
            busy = [router.busy for router, side in list(fastpoll._router_fds) if side == 0]
            send_cancel(service.port, client.pid, client.key)
            code = error_fields(client.until_ready()).get("C")
            client.close()
            return [busy, code]

        self.assertEqual((yield _thread(work)), [[1], "57014"])


class LoadBalancingNodeTroubleOnTheCLoop(LoadBalancingNodeTrouble):
    def setUp(self) -> None:
        super().setUp()
        on_the_c_loop(self)

    @defer.inlineCallbacks
    def test_a_load_balancing_server_lost_while_the_router_waits_on_it(self) -> Any:
        """The replica's backend ends in the middle of a read the router sent: the client
        gets the error and its end, as from one server; the next session works."""
        service = self.start_pooler()
        user, db = self.database()

        def work() -> list[Any]:
            client = long_read_by_the_router(service, user, db)
            self.replica.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :'u'",
                variables={"u": user},
            )
            rest = m.MessageReader().feed(client.read_all())
            client.close(terminate=False)
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                after = conn.execute("SELECT 3").fetchone()
            return [error_fields(rest).get("C"), after]

        self.assertEqual((yield _thread(work)), ["57P01", (3,)])

    @defer.inlineCallbacks
    def test_the_node_detached_while_the_router_waits_on_it(self) -> Any:
        """Failover detaches the replica while the router waits on a read it sent there:
        the session cannot drop that leg (it owes the answer), so the client gets 57P01
        naming the node rather than waiting for ever; the next session reads on the
        primary."""
        service = self.start_pooler()
        user, db = self.database()

        def work() -> list[Any]:
            client = long_read_by_the_router(service, user, db)
            detached = threads.blockingCallFromThread(reactor, service.detach_node, 1)
            rest = m.MessageReader().feed(client.read_all())
            client.close(terminate=False)
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                port = conn.execute("SELECT inet_server_port()").fetchone()
            fields = error_fields(rest)
            return [detached, fields.get("C"), "backend node 1" in fields.get("M", ""), port]

        self.assertEqual((yield _thread(work)), [True, "57P01", True, (self.primary.port,)])


class PasswordsOnBothNodes(RoutingCase):
    """Servers that ask for md5 passwords: the load-balancing server's login is answered
    from pool_passwd (the client's exchange belongs to the primary's login)."""

    def setUp(self) -> None:
        skip_unless_postgres()
        from pgpool_tw_dev.devdb import TempPostgres
        from pgpool_tw_dev.replica import start_replica

        self.primary = TempPostgres(auth_method="md5").start()
        self.addCleanup(self.primary.stop)
        self.replica = start_replica(self.primary, application_name="md5replica")
        self.addCleanup(self.replica.stop)

    def _files(self, user: str, entries: list[str]) -> dict[str, Any]:
        import os

        directory = tempfile.mkdtemp(prefix="pgtw-auth-")
        self.addCleanup(shutil.rmtree, directory, True)
        hba = os.path.join(directory, "pool_hba.conf")
        passwd = os.path.join(directory, "pool_passwd")
        with open(hba, "w", encoding="utf-8") as handle:
            handle.write("host all all 127.0.0.1/32 md5\n")
        fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in entries))
        return {"enable_pool_hba": True, "pool_hba_file": hba, "pool_passwd": passwd}

    def _role(self) -> tuple[str, str]:
        user, db = unique_name("u"), unique_name("d")
        self.primary.create_role(user, "secret-pw")
        self.primary.create_database(db, owner=user)
        from pgpool_tw_dev.replica import wait_replayed

        wait_replayed(self.primary, self.replica)
        return user, db

    @defer.inlineCallbacks
    def test_pool_passwd_answers_both_logins_and_the_check(self) -> Any:
        from pgpool_tw.config.passwd import md5_entry

        user, db = self._role()
        settings = self._files(user, [md5_entry(user, "secret-pw")])
        # sr_check_password '' takes sr_check_user's password from pool_passwd.
        service = self.start_pooler(sr_check_user=user, sr_check_database=db, **settings)

        def work() -> int:
            dsn = f"{self.dsn(service, user, db)} password=secret-pw"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE w (id int)")
                return self._port(conn, "SELECT inet_server_port()")

        # Right after its own CREATE the session reads the primary (read-your-writes).
        self.assertEqual((yield _thread(work)), self.primary.port)
        self.assertEqual(service.factory.cluster[1].pg_role, "standby")  # the check logged in
        # A new session reads the replica, over a login answered from pool_passwd.
        replica_port = yield _thread(self._replica_read, service, user, db)
        self.assertEqual(replica_port, self.replica.port)

    def _replica_read(self, service: PgpoolService, user: str, db: str) -> int:
        dsn = f"{self.dsn(service, user, db)} password=secret-pw"
        with psycopg.connect(dsn, autocommit=True) as conn:
            return self._port(conn, "SELECT inet_server_port()")

    @defer.inlineCallbacks
    def test_without_pool_passwd_the_session_reads_from_the_primary(self) -> Any:
        """enable_pool_hba off: the client's md5 exchange is the primary's; the replica's
        login cannot be answered, so the session keeps to the primary, and says why."""
        user, db = self._role()
        service = self.start_pooler(sr_check_user="")

        def work() -> list[int]:
            dsn = f"{self.dsn(service, user, db)} password=secret-pw"
            with psycopg.connect(dsn, autocommit=True) as conn:
                return [self._port(conn, "SHOW port"), self._port(conn, "SHOW port")]

        self.assertEqual((yield _thread(work)), [self.primary.port, self.primary.port])


class IdleServersPerNode(RoutingCase):
    @defer.inlineCallbacks
    def test_max_pool_caps_each_node(self) -> Any:
        """num_init_children * max_pool idle servers per node, as a pgpool-II child keeps one
        connection per backend in each of its max_pool slots."""
        service = self.start_pooler(num_init_children=1, max_pool=1)
        first, db = self.database()
        second = unique_name("u")
        self.primary.create_role(second)
        self.primary.psql(f'GRANT ALL ON DATABASE "{db}" TO "{second}"')
        wait_replica_caught_up()

        def session(user: str) -> int:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                return self._port(conn)

        self.assertEqual((yield _thread(session, first)), self.replica.port)
        self.assertTrue((yield eventually(lambda: service.pool.idle_count == 2)))
        self.assertEqual((yield _thread(session, second)), self.replica.port)

        def idle() -> tuple[set[str], list[int]]:
            servers = list(service.pool._idle)
            return {s.pool_key.user for s in servers}, sorted(s.pool_key.node for s in servers)

        # The second session's two servers replace the first's, one per node.
        self.assertTrue((yield eventually(lambda: idle() == ({second}, [0, 1]))), idle())
