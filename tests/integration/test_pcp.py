"""The PCP port against the real pcp_* programs of Debian's pgpool2 package.

Each test starts pgpool-tw in trial's reactor with a pcp.conf in a temporary directory and
runs the unchanged ``pcp_*`` programs in threads (``-h 127.0.0.1 -p <port> -U admin -w``,
the password from a PCPPASSFILE), checking their output against what pgpool-II's
documentation shows: pcp_node_count's number, pcp_node_info's fields, a detached node
down and attached back, pcp_promote_node -s really promoting the standby, wrong
passwords and unknown users refused.  scripts/test unpacks the programs when they are not
installed; without them the tests skip.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import tempfile
from typing import Any, Optional

import psycopg
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from pgpool_tw.cluster.cluster import DOWN
from pgpool_tw.config.settings import BackendNode, Config, load_config, parse_config
from pgpool_tw.service import PgpoolService
from pgpool_tw_dev.devdb import TempPostgres, find_pg_bindir
from pgpool_tw_dev.replica import start_replica
from tests.integration.harness import PoolerTestCase, eventually, sleep
from tests.support import skip_unless_postgres

#: md5 of "secret" and of "other", as pg_md5 prints them for pcp.conf.
SECRET_MD5 = "5ebe2294ecd0e0f08eab7690d2a6ee69"
OTHER_MD5 = "795f3202b17cb6bc3d4b771d8c6c9eaf"


def pcp_program(name: str) -> str:
    """The path of a pcp_* program, or SkipTest saying how to get it."""
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if found is None:
        raise unittest.SkipTest(
            f"{name} not found: the pcp_* programs of Debian's pgpool2 package are needed "
            "(scripts/test unpacks packages pgpool2 and libpgpool2 when apt-get can)"
        )
    return found


class PcpMixin:
    """pcp.conf, a PCPPASSFILE and a way to run the tools against one service."""

    dir: str

    def pcp_files(self, password: str = "secret") -> str:
        """Write pcp.conf (admin:md5(secret)) and the tools' password file; pcp.conf's path."""
        self.dir = tempfile.mkdtemp(prefix="pgtw-pcp-")
        os.chmod(self.dir, 0o755)
        self.addCleanup(shutil.rmtree, self.dir, True)  # type: ignore[attr-defined]
        path = os.path.join(self.dir, "pcp.conf")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(f"# pgpool-tw test\nadmin:{SECRET_MD5}\n")
        self.set_password(password)
        return path

    def set_password(self, password: str, user: str = "admin") -> None:
        passfile = os.path.join(self.dir, "pcppass")
        with open(passfile, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:{user}:{password}\n")
        os.chmod(passfile, 0o600)

    def pcp_settings(self) -> dict[str, Any]:
        return {
            "pcp_listen_addresses": ("127.0.0.1",),
            "pcp_port": 0,
            "pcp_socket_dirs": (self.dir,),
        }

    def run_pcp(
        self, service: PgpoolService, name: str, *args: str, host: str = "127.0.0.1"
    ) -> defer.Deferred[subprocess.CompletedProcess[str]]:
        """Run a pcp_* program in a thread, logging in as admin with the password file."""
        port = service.pcp_port
        assert port is not None
        argv = [pcp_program(name), "-h", host, "-p", str(port), "-U", "admin", "-w", *args]
        env = dict(os.environ, PCPPASSFILE=os.path.join(self.dir, "pcppass"), HOME=self.dir)

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
            )

        return threads.deferToThread(run)


class SingleNodeTests(PcpMixin, PoolerTestCase):
    """One node (the shared PostgreSQL): reading commands, logins, reload and stop."""

    def start(self, **settings: Any) -> PgpoolService:
        pcp_program("pcp_node_count")
        pcp_file = self.pcp_files()
        config = Config(
            listen_addresses=("127.0.0.1",),
            port=0,
            socket_dirs=(self.dir,),
            logdir=self.dir,
            backends=(BackendNode(0, self.pg.host, self.pg.port),),
            **self.pcp_settings(),
        )
        service = PgpoolService(dataclasses.replace(config, **settings), reactor, pcp_file=pcp_file)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    @defer.inlineCallbacks
    def test_node_count_and_node_info(self) -> Any:
        """pcp_node_count prints 1; pcp_node_info's twelve fields name the node, its port,
        its status, weight 1.0 and role primary, as pgpool-II's documentation shows."""
        service = self.start()
        counted = yield self.run_pcp(service, "pcp_node_count")
        self.assertEqual((counted.returncode, counted.stdout), (0, "1\n"), counted.stderr)
        info = yield self.run_pcp(service, "pcp_node_info", "-n", "0")
        self.assertEqual(info.returncode, 0, info.stderr)
        fields = info.stdout.split()
        self.assertEqual(fields[:3], [self.pg.host, str(self.pg.port), "1"])
        self.assertEqual(fields[3:7], ["1.000000", "waiting", "unknown", "primary"])
        verbose = yield self.run_pcp(service, "pcp_node_info", "-n", "0", "-v")
        self.assertIn(f"Port                   : {self.pg.port}", verbose.stdout)
        self.assertIn("Role                   : primary", verbose.stdout)
        missing = yield self.run_pcp(service, "pcp_node_info", "-n", "3")
        self.assertIn("invalid node ID : 3", missing.stderr)

    @defer.inlineCallbacks
    def test_wrong_password_and_unknown_user_are_refused(self) -> Any:
        """A wrong password and a user pcp.conf does not list get pgpool-II's FATAL; the
        unix socket (-h the socket directory) takes the right one."""
        service = self.start()
        self.set_password("wrong")
        refused = yield self.run_pcp(service, "pcp_node_count")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn('FATAL:  authentication failed for user "admin"', refused.stderr)
        self.assertIn("username and/or password does not match", refused.stderr)
        self.assertEqual(refused.stdout, "")
        self.set_password("secret", user="mallory")
        passfile = os.path.join(self.dir, "pcppass")
        port = service.pcp_port
        env = dict(os.environ, PCPPASSFILE=passfile, HOME=self.dir)
        argv = [pcp_program("pcp_node_count"), "-h", "127.0.0.1", "-p", str(port)]
        unknown = yield threads.deferToThread(
            subprocess.run,
            argv + ["-U", "mallory", "-w"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        self.assertIn('authentication failed for user "mallory"', unknown.stderr)
        self.set_password("secret")
        local = yield self.run_pcp(service, "pcp_node_count", host=self.dir)
        self.assertEqual(local.stdout, "1\n", local.stderr)

    @defer.inlineCallbacks
    def test_proc_count_and_proc_info_list_client_sessions(self) -> Any:
        """A process is a client session: pcp_proc_count lists the session ids the pooler
        serves, pcp_proc_info -P one of them shows its database and user."""
        service = self.start()
        user, db = self.role_and_db()
        conn = yield self.in_thread(psycopg.connect, self.dsn(service, user, db), autocommit=True)
        self.addCleanup(conn.close)
        yield self.in_thread(conn.execute, "select 1")
        ids = sorted(client.id for client in service.factory.clients)
        self.assertEqual(len(ids), 1)
        counted = yield self.run_pcp(service, "pcp_proc_count")
        self.assertEqual(counted.stdout.split(), [str(i) for i in ids], counted.stderr)
        info = yield self.run_pcp(service, "pcp_proc_info", "-P", str(ids[0]))
        self.assertEqual(info.returncode, 0, info.stderr)
        self.assertEqual(info.stdout.split()[:2], [db, user])
        self.assertIn(str(ids[0]), info.stdout.split())
        missing = yield self.run_pcp(service, "pcp_proc_info", "-P", str(ids[0] + 1000))
        self.assertIn("invalid process ID", missing.stderr)

    @defer.inlineCallbacks
    def test_pool_status_and_health_check_stats(self) -> Any:
        """pcp_pool_status lists the running settings (pcp_port among them, no password);
        pcp_health_check_stats prints pgpool-II's twenty fields for the node."""
        service = self.start(sr_check_password="hunter2")
        status = yield self.run_pcp(service, "pcp_pool_status")
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn("name : pcp_port\nvalue: 0\n", status.stdout)
        self.assertIn(f"name : backend_port0\nvalue: {self.pg.port}\n", status.stdout)
        self.assertNotIn("hunter2", status.stdout)
        stats = yield self.run_pcp(service, "pcp_health_check_stats", "-n", "0", "-v")
        self.assertEqual(stats.returncode, 0, stats.stderr)
        self.assertIn("Node Id                       : 0", stats.stdout)
        self.assertIn(f"Port                          : {self.pg.port}", stats.stdout)
        self.assertIn("Total Count                   : 0", stats.stdout)
        self.assertIn("Role                          : primary", stats.stdout)

    @defer.inlineCallbacks
    def test_reload_rereads_pcp_conf(self) -> Any:
        """pcp.conf is found beside pgpool.conf; pcp_reload_config reloads, and pcp.conf
        with it: the old password is refused from then on, the new one accepted."""
        pcp_program("pcp_reload_config")
        self.pcp_files()
        path = os.path.join(self.dir, "pgpool.conf")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(
                f"listen_addresses = '127.0.0.1'\nport = 0\n"
                f"unix_socket_directories = '{self.dir}'\n"
                f"logdir = '{self.dir}'\nbackend_hostname0 = '{self.pg.host}'\n"
                f"backend_port0 = {self.pg.port}\npcp_listen_addresses = '127.0.0.1'\n"
                f"pcp_port = 0\npcp_socket_dir = '{self.dir}'\n"
            )
        service = PgpoolService(load_config(path), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        with open(os.path.join(self.dir, "pcp.conf"), "w", encoding="utf-8") as handle:
            handle.write(f"admin:{OTHER_MD5}\n")
        reloaded = yield self.run_pcp(service, "pcp_reload_config")
        self.assertEqual(reloaded.stdout, "pcp_reload_config -- Command Successful\n")
        old = yield self.run_pcp(service, "pcp_node_count")
        self.assertIn("authentication failed", old.stderr)
        self.set_password("other")
        new = yield self.run_pcp(service, "pcp_node_count")
        self.assertEqual(new.stdout, "1\n", new.stderr)

    @defer.inlineCallbacks
    def test_unsupported_commands_say_so(self) -> Any:
        """pcp_recovery_node, pcp_watchdog_info and -g answer with an error, never hang."""
        service = self.start()
        recovery = yield self.run_pcp(service, "pcp_recovery_node", "-n", "0")
        self.assertIn("online recovery is not supported by pgpool-tw", recovery.stderr)
        watchdog = yield self.run_pcp(service, "pcp_watchdog_info")
        self.assertIn("watchdog is not enabled", watchdog.stderr)
        graceful = yield self.run_pcp(service, "pcp_detach_node", "-n", "0", "-g")
        self.assertIn("-g is not supported", graceful.stderr)

    @defer.inlineCallbacks
    def test_stop_pgpool_modes(self) -> Any:
        """pcp_stop_pgpool -m smart waits for the open session; -m fast then ends it and
        the pooler; each answers Command Successful first."""
        service = self.start()
        user, db = self.role_and_db()
        conn = yield self.in_thread(psycopg.connect, self.dsn(service, user, db), autocommit=True)
        self.addCleanup(conn.close)
        smart = yield self.run_pcp(service, "pcp_stop_pgpool", "-m", "smart")
        self.assertEqual(smart.stdout, "pcp_stop_pgpool -- Command Successful\n", smart.stderr)
        self.assertTrue((yield eventually(lambda: service.shutting_down == "smart")))
        self.assertEqual(service.ports, [])
        self.assertIsNotNone(service.pcp_port)  # PCP stays open while smart waits
        fast = yield self.run_pcp(service, "pcp_stop_pgpool", "-m", "fast")
        self.assertEqual(fast.returncode, 0, fast.stderr)
        gone = lambda: service.pcp_port is None and not service.pcp.connections  # noqa: E731
        self.assertTrue((yield eventually(gone, 20)))
        self.assertEqual(service.shutting_down, "fast")
        self.assertEqual(list(service.factory.clients), [])
        yield sleep(0.1)  # the smart wait's last timer, set before fast took over, runs out

    @defer.inlineCallbacks
    def test_stop_pgpool_immediate(self) -> Any:
        service = self.start()
        stopped = yield self.run_pcp(service, "pcp_stop_pgpool", "-m", "immediate")
        self.assertEqual(stopped.returncode, 0, stopped.stderr)
        gone = lambda: service.pcp_port is None and not service.pcp.connections  # noqa: E731
        self.assertTrue((yield eventually(gone, 20)))
        self.assertEqual(service.shutting_down, "immediate")


class ClusterTests(PcpMixin, unittest.TestCase):
    """A primary and a streaming standby: roles, detach, attach and promote by PCP."""

    timeout = 240

    def setUp(self) -> None:
        skip_unless_postgres()
        pcp_program("pcp_node_info")
        self.pcp_file = self.pcp_files()

    def start(self, text: str = "") -> tuple[PgpoolService, TempPostgres, TempPostgres]:
        primary = TempPostgres().start()
        self.addCleanup(primary.stop)
        standby = start_replica(primary, application_name="replica1")
        self.addCleanup(standby.stop)
        nodes = "".join(
            f"backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {pg.port}\n"
            f"backend_data_directory{i} = '{pg.data_dir}'\n"
            for i, pg in enumerate((primary, standby))
        )
        config = parse_config(
            nodes + "backend_application_name1 = 'replica1'\n"
            "sr_check_user = 'postgres'\nsr_check_period = 1\n"
            "health_check_period = 1\nhealth_check_user = 'postgres'\n" + text
        )
        config = dataclasses.replace(
            config,
            listen_addresses=("127.0.0.1",),
            port=0,
            socket_dirs=(self.dir,),
            logdir=self.dir,
            **self.pcp_settings(),
        )
        service = PgpoolService(config, reactor, pcp_file=self.pcp_file)
        service.startService()
        self.addCleanup(service.stopService)
        return service, primary, standby

    def failover_script(self, primary: TempPostgres, path: str) -> None:
        """pgpool-II's failover.sh in short: promote %R (the new main's data directory)
        when the failed node %d was the primary %P."""
        pg_ctl = os.path.join(find_pg_bindir(), "pg_ctl")
        promote = shlex.join(primary.run_as_server_argv([pg_ctl]))
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(
                "#!/bin/sh\n"
                f'if [ "$1" = "$2" ] && [ -n "$3" ]; then exec {promote} promote -w -t 60 '
                '-D "$3"; fi\n'
            )
        os.chmod(path, 0o755)

    def node_line(self, out: str, index: int) -> list[str]:
        return out.splitlines()[index].split()

    @defer.inlineCallbacks
    def test_roles_detach_and_attach(self) -> Any:
        """pcp_node_info shows primary and standby as the replication check found them;
        pcp_detach_node -n 1 takes the standby down (status 3, down), pcp_attach_node
        -n 1 brings it back; a detach of an unknown node is refused."""
        service, primary, standby = self.start()
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))
        info = yield self.run_pcp(service, "pcp_node_info")
        self.assertEqual(info.returncode, 0, info.stderr)
        first, second = self.node_line(info.stdout, 0), self.node_line(info.stdout, 1)
        self.assertEqual(first[1], str(primary.port))
        self.assertEqual((first[6], first[7]), ("primary", "primary"))
        self.assertEqual((second[6], second[7]), ("standby", "standby"))
        self.assertEqual(second[3], "0.500000")
        detached = yield self.run_pcp(service, "pcp_detach_node", "-n", "1")
        self.assertEqual(
            detached.stdout, "pcp_detach_node -- Command Successful\n", detached.stderr
        )
        self.assertEqual(cluster[1].status, DOWN)
        info = yield self.run_pcp(service, "pcp_node_info", "-n", "1")
        self.assertEqual(info.stdout.split()[2:5], ["3", "0.500000", "down"])
        attached = yield self.run_pcp(service, "pcp_attach_node", "-n", "1")
        self.assertEqual(
            attached.stdout, "pcp_attach_node -- Command Successful\n", attached.stderr
        )
        self.assertNotEqual(cluster[1].status, DOWN)
        info = yield self.run_pcp(service, "pcp_node_info", "-n", "1")
        self.assertIn(info.stdout.split()[4], ("waiting", "up"))
        unknown = yield self.run_pcp(service, "pcp_detach_node", "-n", "5")
        self.assertIn("node id : 5 is out of range", unknown.stderr)
        health = service.health_check.stats
        self.assertTrue((yield eventually(lambda: 0 in health and health[0].success_count > 0, 30)))
        stats = yield self.run_pcp(service, "pcp_health_check_stats", "-n", "0")
        fields = stats.stdout.split()
        self.assertEqual(fields[:3], ["0", "127.0.0.1", str(primary.port)], stats.stderr)
        self.assertGreaterEqual(int(fields[7]), 1, stats.stdout)  # total_count
        self.assertGreaterEqual(int(fields[8]), 1, stats.stdout)  # success_count

    @defer.inlineCallbacks
    def test_promote_switchover_really_promotes(self) -> Any:
        """pcp_promote_node -n 1 -s: the primary is detached, failover_command promotes
        the standby (pg_is_in_recovery() false on it, asked directly) and pcp_node_info
        names node 1 primary; promoting the primary itself is pgpool-II's FATAL."""
        script = os.path.join(self.dir, "failover.sh")
        service, primary, standby = self.start(f"failover_command = '{script} %d %P %R'\n")
        self.failover_script(primary, script)
        cluster = service.factory.cluster
        self.assertTrue((yield eventually(lambda: cluster.checked, 30)))
        refused = yield self.run_pcp(service, "pcp_promote_node", "-n", "0")
        self.assertIn("specified node is already primary node", refused.stderr)
        promoted = yield self.run_pcp(service, "pcp_promote_node", "-n", "1", "-s")
        self.assertEqual(
            promoted.stdout, "pcp_promote_node -- Command Successful\n", promoted.stderr
        )

        def in_recovery() -> Optional[bool]:
            with psycopg.connect(standby.dsn(), autocommit=True) as conn:
                row = conn.execute("select pg_is_in_recovery()").fetchone()
                return None if row is None else bool(row[0])

        self.assertFalse((yield threads.deferToThread(in_recovery)))
        info = yield self.run_pcp(service, "pcp_node_info", "-v", "-n", "1")
        self.assertIn("Role                   : primary", info.stdout)
        self.assertEqual(cluster[0].status, DOWN)
