"""Health checks, failover, failback and follow-primary against real servers.

Every test makes its own primary and streaming standby (``pg_basebackup -R``), since it
stops, kills or promotes them; the pooler runs in trial's reactor.  The failover command is a
real script: it records its arguments and promotes the new main node with ``pg_ctl
promote`` (as the server's OS user), as an operator's failover.sh does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Optional

import psycopg
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from pgpool_tw.cluster.cluster import DOWN, PRIMARY, STANDBY
from pgpool_tw.config.settings import parse_config
from pgpool_tw.service import PgpoolService
from pgpool_tw_dev.devdb import TempPostgres, find_pg_bindir
from pgpool_tw_dev.replica import start_replica, wait_replayed
from tests.integration.harness import eventually, sleep
from tests.support import skip_unless_postgres

#: failover_command's arguments, in pgpool-II's usual order.
ESCAPES = "%d %h %p %D %m %H %M %P %r %R %N %S"


def _thread(fn: Any, *args: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(fn, *args)


class FailoverCase(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        skip_unless_postgres()
        self.dir = tempfile.mkdtemp(prefix="pgtw-failover-")
        os.chmod(self.dir, 0o755)
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.servers: list[TempPostgres] = []

    def make_cluster(self, standbys: int = 1) -> list[TempPostgres]:
        primary = TempPostgres().start()
        self.addCleanup(primary.stop)
        nodes = [primary]
        for number in range(1, standbys + 1):
            replica = start_replica(primary, application_name=f"replica{number}")
            self.addCleanup(replica.stop)
            nodes.append(replica)
        self.servers = nodes
        return nodes

    def script(self, name: str, promote: bool) -> tuple[str, str]:
        """A command script that appends its arguments to a file (returned) and, with
        ``promote``, promotes its tenth argument's data directory (%R) when the failed node
        was the primary (%d = %P) — what pgpool-II's failover.sh.sample does."""
        record = os.path.join(self.dir, f"{name}.args")
        pg_ctl = os.path.join(find_pg_bindir(), "pg_ctl")
        promote_line = shlex.join(self.servers[0].run_as_server_argv([pg_ctl]))
        lines = ["#!/bin/sh", f'printf "%s\\n" "$*" >> {shlex.quote(record)}']
        if promote:
            lines.append(
                f'if [ "$1" = "$8" ] && [ -n "${{10}}" ]; then '
                f'exec {promote_line} promote -w -t 60 -D "${{10}}"; fi'
            )
        path = os.path.join(self.dir, f"{name}.sh")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(path, 0o755)
        return path, record

    def start_pooler(self, text: str = "", discard_status: bool = False) -> PgpoolService:
        config_nodes = "".join(
            f"backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {pg.port}\n"
            f"backend_data_directory{i} = '{pg.data_dir}'\n"
            + (f"backend_application_name{i} = 'replica{i}'\n" if i else "")
            for i, pg in enumerate(self.servers)
        )
        settings = (
            "sr_check_user = 'postgres'\nsr_check_period = 1\n"
            "health_check_period = 1\nhealth_check_user = 'postgres'\n"
            "health_check_max_retries = 1\nhealth_check_retry_delay = 0.2\n"
            "connect_timeout = 1000\nhealth_check_timeout = 3\n"
            "search_primary_node_timeout = 60\n"
        )
        config = parse_config(config_nodes + settings + text)
        config = dataclasses.replace(
            config,
            listen_addresses=("127.0.0.1",),
            port=0,
            socket_dirs=(self.dir,),
            logdir=self.dir,
        )
        service = PgpoolService(config, reactor, discard_status=discard_status)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def dsn(self, service: PgpoolService, **extra: str) -> str:
        items = {"host": "127.0.0.1", "port": str(service.port), "user": "postgres"}
        items.update(extra)
        items.setdefault("dbname", "postgres")
        return " ".join(f"{k}='{v}'" for k, v in items.items())

    def pgbench(
        self, service: PgpoolService, app: str, *args: str
    ) -> subprocess.CompletedProcess[str]:
        argv = [os.path.join(find_pg_bindir(), "pgbench")]
        if not os.path.exists(argv[0]):
            argv = ["pgbench"]
        argv += ["-h", "127.0.0.1", "-p", str(service.port), "-U", "postgres", *args, "postgres"]
        env = dict(os.environ, PGAPPNAME=app)
        return subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)

    def read_args(self, record: str) -> list[str]:
        try:
            with open(record, encoding="utf-8") as handle:
                return handle.read().splitlines()
        except FileNotFoundError:
            return []


class StandbyLostTests(FailoverCase):
    @defer.inlineCallbacks
    def test_standby_killed_during_pgbench_reads_carry_on(self) -> Any:
        """kill -9 of the standby during pgbench -S: the sessions reading on the primary
        never see an error, the standby is detached (failover_command with its arguments),
        new sessions read on the primary; a restart keeps it down, -D tries it again."""
        primary, standby = self.make_cluster()
        command, record = self.script("failover", promote=True)
        service = self.start_pooler(
            f"failover_command = '{command} {ESCAPES}'\n"
            "app_name_redirect_preference_list = 'on_primary:0,on_standby:1'\n"
        )
        init = yield _thread(self.pgbench, service, "setup", "-i", "-s", "1", "-q")
        self.assertEqual(init.returncode, 0, init.stderr)
        yield _thread(wait_replayed, primary, standby)
        on_primary = _thread(self.pgbench, service, "on_primary", "-S", "-c", "4", "-T", "6")
        on_standby = _thread(self.pgbench, service, "on_standby", "-S", "-c", "4", "-T", "6")
        yield sleep(2)
        yield _thread(standby.crash)
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster[1].status == DOWN, 30)))
        safe, cut = yield defer.gatherResults([on_primary, on_standby])
        self.assertEqual(safe.returncode, 0, safe.stdout + safe.stderr)
        self.assertIn("number of failed transactions: 0", safe.stdout)
        self.assertNotIn("aborted", safe.stderr)
        # The standby's sessions may have seen an error; no more than those four.
        self.assertLessEqual(len(re.findall(r"client \d+ aborted", cut.stderr)), 4, cut.stderr)
        # New sessions asking for the standby read on the primary.
        after = yield _thread(self.pgbench, service, "on_standby", "-S", "-c", "2", "-t", "50")
        self.assertEqual(after.returncode, 0, after.stdout + after.stderr)
        self.assertTrue((yield eventually(lambda: bool(self.read_args(record)), 30)))
        self.assertEqual(
            self.read_args(record)[0],
            f"1 127.0.0.1 {standby.port} {standby.data_dir} 0 127.0.0.1 0 0 "
            f"{primary.port} {primary.data_dir} 127.0.0.1 {primary.port}",
        )
        with open(os.path.join(self.dir, "pgpool_status"), encoding="utf-8") as handle:
            self.assertEqual(handle.read(), "up\ndown\n")
        yield service.stopService()
        # A restart: the standby stays down, even once it runs again.
        yield _thread(standby.restart)
        again = self.start_pooler()
        self.assertEqual(again.factory.cluster[1].status, DOWN)
        yield again.stopService()
        # -D: it is tried again (and it answers: the health check leaves it up).
        fresh = self.start_pooler(discard_status=True)
        self.assertNotEqual(fresh.factory.cluster[1].status, DOWN)
        yield sleep(2.5)
        self.assertNotEqual(fresh.factory.cluster[1].status, DOWN)


class PrimaryStoppedTests(FailoverCase):
    @defer.inlineCallbacks
    def test_primary_stopped_failover_promotes_and_writes_resume(self) -> Any:
        """pg_ctl stop of the primary under writes: the health check (or a failing
        session) detaches it, failover_command gets pgpool-II's arguments and promotes the
        standby, writes resume through the same pooler, and every acknowledged commit
        is on the new primary."""
        primary, standby = self.make_cluster()
        command, record = self.script("failover", promote=True)
        service = self.start_pooler(f"failover_command = '{command} {ESCAPES}'\n")

        def create() -> None:
            with psycopg.connect(self.dsn(service), autocommit=True) as conn:
                conn.execute("CREATE TABLE acked (id int PRIMARY KEY)")

        yield _thread(create)
        acked: list[int] = []
        errors: list[str] = []
        stop = threading.Event()
        halted = threading.Event()
        after_halt: list[int] = []

        def writer() -> None:
            number = 0
            conn: Optional[psycopg.Connection[Any]] = None
            while not stop.is_set():
                number += 1
                try:
                    if conn is None:
                        conn = psycopg.connect(
                            self.dsn(service), autocommit=True, connect_timeout=5
                        )
                    conn.execute("INSERT INTO acked VALUES (%s)", (number,))
                except psycopg.Error as e:
                    errors.append(
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    )
                    if conn is not None:
                        conn.close()
                    conn = None
                    stop.wait(0.1)
                    continue
                acked.append(number)
                if halted.is_set():
                    after_halt.append(number)
                stop.wait(0.01)
            if conn is not None:
                conn.close()

        writing = _thread(writer)
        yield sleep(1.5)
        yield _thread(primary.halt)
        halted.set()
        cluster = service.factory.cluster
        promoted = yield eventually(
            lambda: cluster.detected_primary is not None and cluster.detected_primary.index == 1,
            60,
        )
        self.assertTrue(promoted, [n for n in cluster])
        self.assertTrue((yield eventually(lambda: len(after_halt) >= 20, 60)), errors)
        stop.set()
        yield writing
        self.assertEqual(cluster[0].status, DOWN)
        self.assertEqual((cluster[1].role, cluster[0].role), (PRIMARY, STANDBY))
        self.assertEqual(
            self.read_args(record),
            [
                f"0 127.0.0.1 {primary.port} {primary.data_dir} 1 127.0.0.1 0 0 "
                f"{standby.port} {standby.data_dir} 127.0.0.1 {primary.port}"
            ],
        )
        rows = standby.psql("SELECT id FROM acked").split()
        present = {int(row) for row in rows}
        self.assertEqual(sorted(set(acked) - present), [])
        self.assertGreater(len(acked), 20)


class OperatorTests(FailoverCase):
    @defer.inlineCallbacks
    def test_detach_attach_and_disallowed(self) -> Any:
        """detach_node runs failover_command for the standby and moves its readers to the
        primary; attach_node runs failback_command and the node takes reads again; a node
        flagged DISALLOW_TO_FAILOVER is never detached."""
        primary, standby = self.make_cluster()
        failover, failover_record = self.script("failover", promote=False)
        failback, failback_record = self.script("failback", promote=False)
        service = self.start_pooler(
            f"failover_command = '{failover} {ESCAPES}'\n"
            f"failback_command = '{failback} {ESCAPES}'\n"
            "backend_weight0 = 0\nbackend_flag0 = 'DISALLOW_TO_FAILOVER'\n"
        )
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))

        def read_port() -> int:
            with psycopg.connect(self.dsn(service), autocommit=True) as conn:
                return int(conn.execute("SELECT inet_server_port()").fetchone()[0])  # type: ignore[index]

        self.assertEqual((yield _thread(read_port)), standby.port)
        self.assertFalse((yield service.detach_node(0)))
        self.assertNotEqual(cluster[0].status, DOWN)
        self.assertTrue((yield service.detach_node(1)))
        self.assertEqual(cluster[1].status, DOWN)
        self.assertEqual((yield _thread(read_port)), primary.port)
        self.assertEqual(
            self.read_args(failover_record),
            [
                f"1 127.0.0.1 {standby.port} {standby.data_dir} 0 127.0.0.1 0 0 "
                f"{primary.port} {primary.data_dir} 127.0.0.1 {primary.port}"
            ],
        )
        self.assertTrue((yield service.attach_node(1)))
        self.assertNotEqual(cluster[1].status, DOWN)
        self.assertEqual((yield _thread(read_port)), standby.port)
        self.assertEqual(
            self.read_args(failback_record),
            [
                f"1 127.0.0.1 {standby.port} {standby.data_dir} 0 127.0.0.1 0 0 "
                f"{primary.port} {primary.data_dir} 127.0.0.1 {primary.port}"
            ],
        )

    @defer.inlineCallbacks
    def test_switchover_promotes_and_follow_primary_runs(self) -> Any:
        """promote_node(1, switchover): the primary is detached, failover_command promotes
        node 1, and follow_primary_command runs for node 2 (detached to follow it); with
        no node up a new client gets one FATAL."""
        primary, first, second = self.make_cluster(standbys=2)
        failover, _ = self.script("failover", promote=True)
        follow, follow_record = self.script("follow", promote=False)
        service = self.start_pooler(
            f"failover_command = '{failover} {ESCAPES}'\n"
            f"follow_primary_command = '{follow} {ESCAPES}'\n"
        )
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))
        self.assertTrue((yield service.promote_node(1, switchover=True)))
        found = cluster.detected_primary
        self.assertEqual(found.index if found is not None else None, 1)
        self.assertEqual([n.status == DOWN for n in cluster], [True, False, True])
        self.assertTrue((yield eventually(lambda: bool(self.read_args(follow_record)), 30)))
        self.assertEqual(
            self.read_args(follow_record),
            [
                f"2 127.0.0.1 {second.port} {second.data_dir} 1 127.0.0.1 0 0 "
                f"{first.port} {first.data_dir} 127.0.0.1 {primary.port}"
            ],
        )

        def write() -> str:
            with psycopg.connect(self.dsn(service), autocommit=True) as conn:
                conn.execute("CREATE TABLE after_switchover (id int)")
                return str(conn.execute("SELECT inet_server_port()").fetchone()[0])  # type: ignore[index]

        self.assertEqual((yield _thread(write)), str(first.port))
        # Every node down: one FATAL says so.
        self.assertTrue((yield service.detach_node(1)))

        def refused() -> str:
            try:
                psycopg.connect(self.dsn(service), connect_timeout=5).close()
            except psycopg.OperationalError as e:
                return str(e)
            return "connected"

        self.assertIn("no backend node is up", (yield _thread(refused)))


class NoPrimaryTests(FailoverCase):
    @defer.inlineCallbacks
    def test_reads_go_on_writes_fail_clearly_until_a_primary_appears(self) -> Any:
        """The primary stops and nothing promotes the standby: reads carry on there,
        writes fail with PostgreSQL's read-only error; once an operator promotes it, the
        search finds it and writes succeed through the same pooler."""
        primary, standby = self.make_cluster()
        service = self.start_pooler("backend_weight0 = 0\n")
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))
        yield _thread(primary.halt)
        self.assertTrue((yield eventually(lambda: cluster[0].status == DOWN, 30)))

        def read_and_write() -> tuple[int, str]:
            with psycopg.connect(self.dsn(service), autocommit=True) as conn:
                port = int(conn.execute("SELECT inet_server_port()").fetchone()[0])  # type: ignore[index]
                try:
                    conn.execute("CREATE TABLE written (id int)")
                except psycopg.Error as e:
                    return port, e.sqlstate or ""
                return port, "written"

        self.assertEqual((yield _thread(read_and_write)), (standby.port, "25006"))
        yield _thread(standby.promote)
        self.assertTrue((yield eventually(lambda: cluster.detected_primary is not None, 30)))
        self.assertEqual((yield _thread(read_and_write)), (standby.port, "written"))


class CheckRoundTests(FailoverCase):
    @defer.inlineCallbacks
    def test_auto_failback_attaches_a_standby_that_streams(self) -> Any:
        """auto_failback: a detached standby that streams from the primary (its
        backend_application_name in pg_stat_replication) is attached again."""
        self.make_cluster()
        failback, record = self.script("failback", promote=False)
        service = self.start_pooler(
            f"auto_failback = on\nauto_failback_interval = 1\nfailback_command = '{failback} %d'\n"
        )
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))
        self.assertTrue((yield service.detach_node(1)))
        self.assertEqual(cluster[1].status, DOWN)
        self.assertTrue((yield eventually(lambda: cluster[1].status != DOWN, 30)))
        self.assertTrue((yield eventually(lambda: self.read_args(record) == ["1"], 30)))

    @defer.inlineCallbacks
    def test_detach_false_primary(self) -> Any:
        """detach_false_primary: a standby promoted behind the pooler's back (two nodes
        not in recovery, no standby to say which is true) is detached; node 0 stays
        primary."""
        primary, standby = self.make_cluster()
        service = self.start_pooler("detach_false_primary = on\n")
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))
        yield _thread(standby.promote)
        self.assertTrue((yield eventually(lambda: cluster[1].status == DOWN, 30)))
        found = cluster.detected_primary
        self.assertEqual(found.index if found is not None else None, 0)
        self.assertEqual(cluster[0].status == DOWN, False)


class HealthCheckTests(FailoverCase):
    @defer.inlineCallbacks
    def test_a_frozen_standby_is_detached_after_the_retries(self) -> Any:
        """SIGSTOP on the standby with no session there: each try times out
        (health_check_timeout), the retry too, then the node is detached; the counters
        say so."""
        _, standby = self.make_cluster()
        service = self.start_pooler(
            "failover_on_backend_error = off\nhealth_check_timeout = 1\nbackend_weight1 = 0\n"
        )
        self.addCleanup(standby.freeze, False)
        cluster = service.factory.cluster
        checks = service.health_check.stats
        self.assertTrue((yield eventually(lambda: 1 in checks and checks[1].success_count, 30)))
        yield _thread(standby.freeze)
        self.assertTrue((yield eventually(lambda: cluster[1].status == DOWN, 30)))
        stats = service.health_check.stats[1]
        self.assertGreaterEqual(stats.fail_count, 1)
        self.assertGreaterEqual(stats.retry_count, 1)
        self.assertEqual(service.health_check.stats[0].fail_count, 0)

    @defer.inlineCallbacks
    def test_without_checks_a_failing_node_stays_attached(self) -> Any:
        """health_check_period = 0 and failover_on_backend_error = off: a session that
        loses its server gets an error and nothing is detached (pgpool-II's meaning)."""
        _, standby = self.make_cluster()
        service = self.start_pooler(
            "health_check_period = 0\nfailover_on_backend_error = off\nbackend_weight0 = 0\n"
        )
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))
        yield _thread(standby.crash)

        def read() -> str:
            try:
                with psycopg.connect(self.dsn(service), autocommit=True) as conn:
                    conn.execute("SELECT inet_server_port()")
            except psycopg.Error as e:
                return type(e).__name__
            return "read"

        yield _thread(read)
        yield sleep(1.5)
        self.assertNotEqual(cluster[1].status, DOWN)
        self.assertEqual(service.health_check.stats, {})


class LastNodeTests(FailoverCase):
    @defer.inlineCallbacks
    def test_the_last_node_up_is_never_detached_automatically(self) -> Any:
        """One server, health check on: while it is stopped, clients get an error naming
        it and the node stays attached; once it runs again clients are served, with no
        operator."""
        (server,) = self.make_cluster(standbys=0)
        service = self.start_pooler("health_check_period = 1\n")
        cluster = service.factory.cluster

        def select() -> str:
            try:
                with psycopg.connect(self.dsn(service), autocommit=True, connect_timeout=5) as c:
                    return str(c.execute("SELECT 1").fetchone()[0])  # type: ignore[index]
            except psycopg.OperationalError as e:
                return str(e)

        self.assertEqual((yield _thread(select)), "1")
        yield _thread(server.halt)
        checks = service.health_check.stats
        self.assertTrue((yield eventually(lambda: 0 in checks and checks[0].fail_count, 30)))
        self.assertIn(f"127.0.0.1:{server.port}", (yield _thread(select)))
        self.assertNotEqual(cluster[0].status, DOWN)
        yield _thread(server.restart)
        self.assertEqual((yield _thread(select)), "1")
        self.assertNotEqual(cluster[0].status, DOWN)
