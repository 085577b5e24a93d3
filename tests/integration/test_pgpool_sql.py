"""pgpool-II's SQL commands on any client connection, with psql and a protocol client.

``SHOW pool_*`` and ``PGPOOL SHOW/SET/RESET`` are answered by the pooler in every kind of
session: session mode on Twisted's path and on the C loop (where the tracker stops its
walk before a watched Query), a warm-lane session (promoted to Python), transaction mode
(between and inside transactions) — and everything else still reaches PostgreSQL.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Generator
from typing import Any

import psycopg
from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.rows import parse_data_row
from pgpool_tw.service import PgpoolService
from pgpool_tw_dev.devdb import client_env, pg_bin
from tests.integration.harness import PoolerTestCase, RawClient, eventually, sleep

Steps = Generator[Deferred[Any], Any, None]


def rows(answer: list[tuple[int, bytes]]) -> list[tuple[Any, ...]]:
    return [parse_data_row(body) for kind, body in answer if kind == ord("D")]


def columns(answer: list[tuple[int, bytes]]) -> list[str]:
    for kind, body in answer:
        if kind == ord("T"):
            count, at, names = int.from_bytes(body[:2], "big"), 2, []
            for _ in range(count):
                end = body.index(b"\0", at)
                names.append(body[at:end].decode())
                at = end + 1 + 18
            return names
    return []


def answers(client: RawClient, count: int) -> list[list[tuple[int, bytes]]]:
    """The next ``count`` answers, each up to its ReadyForQuery (one read may hold
    several: RawClient.until_ready would drop the later ones)."""
    out: list[list[tuple[int, bytes]]] = [[]]
    while len(out) <= count:
        for kind, body in client.read_messages():
            out[-1].append((kind, body))
            if kind == m.READY_FOR_QUERY:
                client.status = body[0]
                out.append([])
    return out[:count]


def errors(answer: list[tuple[int, bytes]]) -> list[dict[str, str]]:
    return [m.parse_fields(body) for kind, body in answer if kind == m.ERROR_RESPONSE]


class PgpoolSqlTests(PoolerTestCase):
    """Session mode on Twisted's path (the C-loop class below reruns every test)."""

    settings: dict[str, Any] = {}

    def start(self, **settings: Any) -> PgpoolService:
        return self.start_pooler(**{**self.settings, **settings})

    @inlineCallbacks
    def test_show_commands_with_psql(self) -> Steps:
        """psql gets each SHOW pool_* from the pooler, with pgpool-II's columns."""
        service = self.start()
        user, db = self.role_and_db()
        psql = str(pg_bin("psql"))

        def run(sql: str) -> str:
            done = subprocess.run(
                [psql, "-X", "-A", "-h", "127.0.0.1", "-p", str(service.port), "-U", user, db]
                + ["-c", sql],
                env=client_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            return done.stdout

        nodes = yield self.in_thread(run, "SHOW pool_nodes")
        self.assertTrue(nodes.startswith("node_id|hostname|port|status|pg_status|lb_weight|"))
        version = yield self.in_thread(run, "show POOL_VERSION;")
        self.assertIn("(pgpool-tw)", version)
        status = yield self.in_thread(run, "SHOW pool_status")
        self.assertTrue(status.startswith("item|value|description\n"), status)
        self.assertIn("\nnum_init_children|32|\n", status)
        processes = yield self.in_thread(run, "SHOW pool_processes")
        self.assertIn(f"|{db}|{user}|", processes)  # psql's own session
        words = {line.rsplit("|", 1)[-1] for line in processes.splitlines()[1:-1]}
        self.assertTrue(
            words <= {"Idle", "Idle in transaction", "Execute command", "Wait for connection"},
            words,
        )
        backend = yield self.in_thread(run, "SHOW pool_backend_stats")
        self.assertTrue(backend.startswith("node_id|hostname|port|status|role|select_cnt|"))
        health = yield self.in_thread(run, "SHOW pool_health_check_stats")
        self.assertIn("|total_count|success_count|fail_count|", health)
        # Everything else is PostgreSQL's.
        path = yield self.in_thread(run, "SHOW search_path")
        self.assertIn('"$user", public', path)

    @inlineCallbacks
    def test_pgpool_set_show_reset_and_its_effect(self) -> Steps:
        """PGPOOL SET client_idle_limit for one session closes that session when idle,
        though pgpool.conf's limit is off; PGPOOL SHOW/RESET read and undo it."""
        service = self.start()
        user, db = self.role_and_db()
        client = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(client.startup, user=user, database=db)
        shown = yield self.in_thread(client.query, "PGPOOL SHOW client_idle_limit")
        self.assertEqual((columns(shown), rows(shown)), (["client_idle_limit"], [("0",)]))
        yield self.in_thread(client.query, "PGPOOL SET client_idle_limit = 30")
        shown = yield self.in_thread(client.query, "PGPOOL SHOW client_idle_limit")
        self.assertEqual(rows(shown), [("30",)])
        reset = yield self.in_thread(client.query, "PGPOOL RESET client_idle_limit")
        self.assertEqual(errors(reset), [])
        shown = yield self.in_thread(client.query, "PGPOOL SHOW client_idle_limit")
        self.assertEqual(rows(shown), [("0",)])
        refused = yield self.in_thread(client.query, "PGPOOL SET port = 1")
        self.assertEqual(errors(refused)[0]["C"], "55P02")
        answer = yield self.in_thread(client.query, "select 41 + 1")
        self.assertEqual(rows(answer), [("42",)])  # the session goes on
        yield self.in_thread(client.query, "PGPOOL SET client_idle_limit TO 1")
        yield sleep(2.5)
        closed = yield self.in_thread(client.read_all)
        self.assertIn(b"client_idle_limit", closed)  # pgpool-II's FATAL for an idle client
        client.close(terminate=False)
        other = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(other.startup, user=user, database=db)
        yield sleep(2.5)  # pgpool.conf's limit (off) holds for the others
        answer = yield self.in_thread(other.query, "select 1")
        self.assertEqual(rows(answer), [("1",)])
        yield self.in_thread(other.close)

    @inlineCallbacks
    def test_pipelined_and_cut_queries(self) -> Steps:
        """A SHOW after a pipelined SELECT, a SHOW cut inside its first word across two
        writes, and bytes after it in the same write: each answered, in order."""
        service = self.start()
        user, db = self.role_and_db()
        client = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(client.startup, user=user, database=db)
        # Alone, cut inside "show": the pooler waits for the rest.
        show = m.query("  show pool_version")
        client.send(show[:8])
        yield sleep(0.2)
        client.send(show[8:] + m.query("select 7"))
        first, second = yield self.in_thread(answers, client, 2)
        self.assertIn("(pgpool-tw)", rows(first)[0][0])
        self.assertEqual(rows(second), [("7",)])
        # Behind a statement the server still answers: PostgreSQL's answer, in order.
        client.send(m.query("select pg_sleep(0.2)") + m.query("SHOW pool_version"))
        _, behind = yield self.in_thread(answers, client, 2)
        self.assertTrue(rows(behind) or errors(behind))
        # A SHOW the pooler does not own, split, reaches PostgreSQL whole.
        other = m.query("SHOW server_version_num")
        client.send(other[:7])
        yield sleep(0.2)
        client.send(other[7:])
        answer = yield self.in_thread(client.until_ready)
        self.assertTrue(rows(answer)[0][0].startswith("15"), answer)
        answer = yield self.in_thread(client.query, "select 8")
        self.assertEqual(rows(answer), [("8",)])
        yield self.in_thread(client.close)
        if self.settings.get("pool_mode") != "transaction":  # the server went back clean
            self.assertTrue((yield eventually(lambda: service.pool.idle_count == 1)))

    @inlineCallbacks
    def test_pool_processes_agree_with_pg_stat_activity(self) -> Steps:
        """While clients run queries, SHOW pool_processes and pool_pools list each client
        with the pid of the server it holds, the pids pg_stat_activity shows."""
        service = self.start()
        user, db = self.role_and_db()
        stop = threading.Event()
        ready = threading.Barrier(4)

        def worker() -> None:
            with psycopg.connect(self.dsn(service, user, db), autocommit=True) as conn:
                conn.execute("select 1")
                ready.wait(30)
                while not stop.is_set():
                    conn.execute("select pg_sleep(0.01)")

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            yield self.in_thread(ready.wait, 30)
            client = yield self.in_thread(RawClient, service.port)
            yield self.in_thread(client.startup, user=user, database=db)
            processes = yield self.in_thread(client.query, "SHOW pool_processes")
            pools = yield self.in_thread(client.query, "SHOW pool_pools")
            ours = rows((yield self.in_thread(client.query, "select pg_backend_pid()")))[0][0]
            yield self.in_thread(client.close)
        finally:
            stop.set()
            # Joined in a thread: the workers' queries need this reactor to finish.
            yield self.in_thread(lambda: [thread.join(30) for thread in threads])
        listed = [row for row in rows(processes) if row[3] == db]
        self.assertEqual(len(listed), 4)  # three workers and this client
        self.assertEqual(columns(pools)[:3], ["pool_pid", "start_time", "client_connection_count"])
        held = {row[14] for row in rows(pools) if row[5] == db and row[15] == "1"}
        activity = set(self.server_pids(user))
        self.assertIn(ours, held)  # the asking client holds its server while it asks
        self.assertTrue({int(pid) for pid in held} <= activity, (held, activity))
        if self.settings.get("pool_mode") != "transaction":
            self.assertEqual(len(held), 4)  # each session holds its own server


class UnderPgbenchTests(PoolerTestCase):
    """The acceptance's check: psql's SHOW commands while pgbench runs (the C loop, as
    under twistd)."""

    c_loop = True

    @inlineCallbacks
    def test_show_commands_while_pgbench_runs(self) -> Steps:
        """pool_processes lists pgbench's clients with the servers pg_stat_activity
        shows, and the queries they ran move pool_backend_stats-free counters: psql's
        answers come from the pooler while pgbench's queries go through it."""
        service = self.start_pooler()
        user, db = self.role_and_db()
        env = client_env()
        common = ["-h", "127.0.0.1", "-p", str(service.port), "-U", user]
        pgbench, psql = str(pg_bin("pgbench")), str(pg_bin("psql"))

        def run() -> tuple[str, str, set[int], subprocess.CompletedProcess[str]]:
            subprocess.run(
                [pgbench, "-i", "-s", "1", "-q", *common, db], env=env, check=True,
                capture_output=True, timeout=120,
            )  # fmt: skip
            bench = subprocess.Popen(
                [pgbench, "-S", "-c", "4", "-j", "2", "-T", "4", *common, db],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(2)
            shown = subprocess.run(
                [psql, "-X", "-A", *common, db, "-c", "SHOW pool_processes"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            pools = subprocess.run(
                [psql, "-X", "-A", *common, db, "-c", "SHOW pool_pools"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            activity = self.server_pids(user)
            out, err = bench.communicate(timeout=60)
            done = subprocess.CompletedProcess(bench.args, bench.returncode, out, err)
            return shown.stdout, pools.stdout, activity, done

        processes, pools, activity, done = yield self.in_thread(run)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("number of failed transactions: 0", done.stdout)
        rows = [line.split("|") for line in processes.splitlines()[1:-1]]
        # pgbench's 4 (one of them a warm login the C loop serves alone: id 0) and psql.
        self.assertEqual(len([row for row in rows if row[3] == db]), 5, processes)
        held = {
            int(line.split("|")[14])
            for line in pools.splitlines()[1:-1]
            if line.split("|")[5] == db and line.split("|")[15] == "1"
        }
        self.assertEqual(len(held), 5)
        self.assertTrue(held <= activity, (held, activity))


class CLoopPgpoolSqlTests(PgpoolSqlTests):
    c_loop = True

    @inlineCallbacks
    def test_warm_session_is_promoted_for_show(self) -> Steps:
        """A repeat login served by the warm lane in C: its SHOW pool_version goes to
        Python, which answers and carries the session on."""
        service = self.start()
        user, db = self.role_and_db()
        for _ in range(2):  # Python learns the login, then lends its server to the lane
            client = yield self.in_thread(RawClient, service.port)
            yield self.in_thread(client.startup, user=user, database=db)
            yield self.in_thread(client.close)
            yield sleep(0.1)
        warm = service.factory.warm
        assert warm is not None
        hits = warm.lane.hits
        client = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(client.startup, user=user, database=db)
        self.assertEqual(warm.lane.hits, hits + 1)
        answer = yield self.in_thread(client.query, "SHOW pool_version")
        self.assertIn("(pgpool-tw)", rows(answer)[0][0])
        self.assertEqual(warm.promoted, 1)
        answer = yield self.in_thread(client.query, "select 5")
        self.assertEqual(rows(answer), [("5",)])
        yield self.in_thread(client.close)


class TransactionPgpoolSqlTests(PgpoolSqlTests):
    settings = {"pool_mode": "transaction", "default_pool_size": 5}

    @inlineCallbacks
    def test_inside_a_transaction(self) -> Steps:
        """Between statements of a transaction the pooler answers too; the transaction
        and its server stay as they were."""
        service = self.start()
        user, db = self.role_and_db()
        client = yield self.in_thread(RawClient, service.port)
        yield self.in_thread(client.startup, user=user, database=db)
        yield self.in_thread(client.query, "BEGIN")
        pid = rows((yield self.in_thread(client.query, "select pg_backend_pid()")))[0][0]
        answer = yield self.in_thread(client.query, "SHOW pool_pools")
        self.assertEqual(client.status, m.IN_TRANSACTION)
        mine = [row for row in rows(answer) if row[14] == pid]
        self.assertEqual((len(mine), mine[0][16]), (1, "Idle in transaction"))
        again = rows((yield self.in_thread(client.query, "select pg_backend_pid()")))[0][0]
        self.assertEqual(again, pid)
        yield self.in_thread(client.query, "COMMIT")
        self.assertEqual(client.status, m.IDLE)
        yield self.in_thread(client.close)


class CLoopTransactionPgpoolSqlTests(TransactionPgpoolSqlTests):
    c_loop = True
