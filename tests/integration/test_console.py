"""PgBouncer's admin console on the virtual databases ``pgbouncer`` and ``pgpool``, with
psql and a protocol-level client against a real pooler and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.rows import parse_data_row
from pgpool_tw.service import PgpoolService
from pgpool_tw_dev.devdb import client_env, pg_bin
from tests.integration.harness import PoolerTestCase, RawClient, eventually

Steps = Generator[Deferred[Any], Any, None]


def _rows(answer: list[tuple[int, bytes]]) -> list[tuple[Any, ...]]:
    return [parse_data_row(body) for kind, body in answer if kind == ord("D")]


def _errors(answer: list[tuple[int, bytes]]) -> list[dict[str, str]]:
    return [m.parse_fields(body) for kind, body in answer if kind == m.ERROR_RESPONSE]


def console_pooler(case: PoolerTestCase, hba: bool = True, **settings: Any) -> PgpoolService:
    """A pooler whose console admin_u and stats_u may use (pool_hba trust, an empty
    pool_passwd)."""
    directory = tempfile.mkdtemp(prefix="pgtw-console-")
    case.addCleanup(subprocess.run, ["rm", "-rf", directory])
    hba_path = os.path.join(directory, "pool_hba.conf")
    passwd_path = os.path.join(directory, "pool_passwd")
    with open(hba_path, "w", encoding="utf-8") as handle:
        handle.write("host all all 127.0.0.1/32 trust\nlocal all all trust\n")
    with open(passwd_path, "w", encoding="utf-8") as handle:
        handle.write("")
    values: dict[str, Any] = {
        "admin_users": ("admin_u",),
        "stats_users": ("stats_u",),
    }
    if hba:
        values.update(enable_pool_hba=True, pool_hba_file=hba_path, pool_passwd=passwd_path)
    values.update(settings)
    return case.start_pooler(**values)


class ConsoleTests(PoolerTestCase):
    def start(self, hba: bool = True, **settings: Any) -> PgpoolService:
        return console_pooler(self, hba, **settings)

    def console(self, service: PgpoolService, user: str, db: str = "pgbouncer") -> RawClient:
        client = RawClient(service.port)
        client.startup(user=user, database=db)
        return client

    @inlineCallbacks
    def test_show_pools_and_stats_follow_the_traffic(self) -> Steps:
        service = self.start()
        user, db = self.role_and_db()

        def run() -> tuple[list[Any], list[Any], list[Any]]:
            worker = RawClient(service.port)
            worker.startup(user=user, database=db)
            for i in range(20):
                worker.query(f"select {i}")
            console = self.console(service, "admin_u")
            try:
                pools = _rows(console.query("SHOW POOLS;"))
                stats = _rows(console.query("show stats"))
                lists = _rows(console.query("SHOW LISTS"))
            finally:
                console.close()
                worker.close()
            return pools, stats, lists

        pools, stats, lists = yield self.in_thread(run)
        mine = [row for row in pools if row[:2] == (db, user)]
        self.assertEqual(len(mine), 1, pools)
        self.assertEqual(mine[0][2], "1")  # cl_active: the worker
        self.assertEqual(mine[0][11], "session")
        (row,) = [row for row in stats if row[0] == db]
        self.assertGreaterEqual(int(row[1]), 20)  # total_xact_count
        self.assertGreaterEqual(int(row[2]), 20)  # total_query_count
        self.assertIn(("pools", "1"), [tuple(r) for r in lists])

    @inlineCallbacks
    def test_psql_reads_the_console(self) -> Steps:
        service = self.start()

        def run() -> str:
            out = subprocess.run(
                [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(service.port), "-U", "stats_u",
                 "-d", "pgpool", "-At", "-c", "SHOW VERSION", "-c", "SHOW CONFIG"],
                env=client_env(), capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            return out.stdout

        out = yield self.in_thread(run)
        self.assertIn("pgpool-tw", out.splitlines()[0])
        self.assertIn("admin_users|admin_u||yes", out)
        self.assertIn("port|", out)

    @inlineCallbacks
    def test_admin_commands_are_for_admin_users_only(self) -> Steps:
        service = self.start()

        def run() -> tuple[list[Any], list[Any], list[Any]]:
            stats = self.console(service, "stats_u")
            admin = self.console(service, "admin_u")
            try:
                refused = _errors(stats.query("RELOAD"))
                done = admin.query("RELOAD")
                not_yet = _errors(admin.query("SHOW MEM"))
            finally:
                stats.close()
                admin.close()
            return refused, done, not_yet

        refused, done, not_yet = yield self.in_thread(run)
        self.assertEqual([e["C"] for e in refused], ["42501"])
        self.assertEqual(_errors(done), [])
        self.assertIn((ord("C"), b"RELOAD\0"), done)
        self.assertEqual([e["C"] for e in not_yet], ["0A000"])

    @inlineCallbacks
    def test_anyone_else_is_refused(self) -> Steps:
        service = self.start()
        user, _ = self.role_and_db()

        def run() -> list[dict[str, str]]:
            client = RawClient(service.port)
            return _errors(client.startup(user=user, database="pgbouncer"))

        errors = yield self.in_thread(run)
        self.assertEqual([(e["S"], e["C"]) for e in errors], [("FATAL", "42501")])

    @inlineCallbacks
    def test_the_console_needs_the_poolers_own_password_check(self) -> Steps:
        service = self.start(hba=False)

        def run() -> list[dict[str, str]]:
            client = RawClient(service.port)
            return _errors(client.startup(user="admin_u", database="pgbouncer"))

        errors = yield self.in_thread(run)
        self.assertEqual([e["C"] for e in errors], ["28000"])
        self.assertIn("enable_pool_hba", errors[0]["M"])

    @inlineCallbacks
    def test_show_clients_and_servers_list_the_connections(self) -> Steps:
        service = self.start()
        user, db = self.role_and_db()

        def run() -> tuple[str, list[Any], list[Any]]:
            worker = RawClient(service.port)
            worker.startup(user=user, database=db, application_name="worker_app")
            pid = _rows(worker.query("select pg_backend_pid()"))[0][0]
            console = self.console(service, "stats_u")
            try:
                clients = _rows(console.query("SHOW CLIENTS"))
                servers = _rows(console.query("SHOW SERVERS"))
            finally:
                console.close()
                worker.close()
            return pid, clients, servers

        pid, clients, servers = yield self.in_thread(run)
        mine = [row for row in clients if row[1:3] == (user, db)]
        self.assertEqual(len(mine), 1, clients)
        self.assertEqual(
            (mine[0][3], mine[0][4], mine[0][8]), ("active", "127.0.0.1", "worker_app")
        )
        self.assertIn(("stats_u", "pgbouncer"), [row[1:3] for row in clients])
        (server,) = [row for row in servers if row[1:3] == (user, db)]
        self.assertEqual((server[3], server[7]), ("active", pid))

    @inlineCallbacks
    def test_kill_ends_a_databases_clients_and_servers(self) -> Steps:
        service = self.start()
        user, db = self.role_and_db()

        def run() -> tuple[list[dict[str, str]], list[Any]]:
            worker = RawClient(service.port)
            worker.startup(user=user, database=db)
            worker.query("select 1")
            admin = self.console(service, "admin_u")
            try:
                done = admin.query(f"KILL {db}")
            finally:
                admin.close()
            return _errors(m.MessageReader().feed(worker.read_all())), done

        errors, done = yield self.in_thread(run)
        self.assertIn((ord("C"), b"KILL\0"), done)
        self.assertEqual([(e["S"], e["C"]) for e in errors], [("FATAL", "57P01")])
        self.assertTrue((yield eventually(lambda: not self.server_pids(user))))

    @inlineCallbacks
    def test_reconnect_replaces_pooled_servers(self) -> Steps:
        service = self.start()
        user, db = self.role_and_db()

        def pid() -> str:
            worker = RawClient(service.port)
            worker.startup(user=user, database=db)
            try:
                return str(_rows(worker.query("select pg_backend_pid()"))[0][0])
            finally:
                worker.close()

        def reconnect() -> None:
            admin = self.console(service, "admin_u")
            try:
                assert not _errors(admin.query(f"RECONNECT {db}"))
            finally:
                admin.close()

        first = yield self.in_thread(pid)
        again = yield self.in_thread(pid)
        self.assertEqual(first, again)  # pooled
        yield self.in_thread(reconnect)
        self.assertTrue((yield eventually(lambda: int(first) not in self.server_pids(user))))
        after = yield self.in_thread(pid)
        self.assertNotEqual(after, first)

    @inlineCallbacks
    def test_kill_client_ends_one_client(self) -> Steps:
        service = self.start()
        user, db = self.role_and_db()

        def run() -> tuple[list[dict[str, str]], list[Any]]:
            victim = RawClient(service.port)
            victim.startup(user=user, database=db, application_name="victim")
            other = RawClient(service.port)
            other.startup(user=user, database=db, application_name="other")
            admin = self.console(service, "admin_u")
            try:
                clients = _rows(admin.query("SHOW CLIENTS"))
                (victim_id,) = [row[10] for row in clients if row[8] == "victim"]
                assert not _errors(admin.query(f"KILL_CLIENT {victim_id}"))
                errors = _errors(m.MessageReader().feed(victim.read_all()))
                still = _rows(other.query("select 1"))
            finally:
                admin.close()
                other.close()
            return errors, still

        errors, still = yield self.in_thread(run)
        self.assertEqual([e["C"] for e in errors], ["57P01"])
        self.assertEqual(still, [("1",)])
