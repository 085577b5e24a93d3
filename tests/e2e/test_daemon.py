"""The daemon an operator runs: signals, reload and systemd's notify protocol, end to end.

Each test starts a real ``twistd -n pgpool`` on the shared throwaway PostgreSQL, holds
psycopg sessions through it, signals that process (by its own pid, never any other) and
watches the outcome from three sides: the clients, the pooler's log, and PostgreSQL's
``pg_stat_activity`` asked directly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable, Optional

import psycopg
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.devdb import free_port
from tests.e2e.pooler import (
    START_TIMEOUT,
    TWISTD,
    PoolerProcess,
    Setting,
    client_env,
    make_temp_dir,
    pg_bin,
)
from tests.support import shared_postgres, skip_unless_postgres, unique_name

PID = "select pg_backend_pid()"
DEFAULT_SEARCH_PATH = '"$user", public'


class DaemonProcess(PoolerProcess):
    """A PoolerProcess that can take extra environment, rewrite its conf and be signalled."""

    def __init__(
        self,
        testcase: SynchronousTestCase,
        settings: Optional[dict[str, Setting]] = None,
        env: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(testcase, shared_postgres(), settings=settings)
        self.env = env or {}
        self.base_lines = list(self.lines)

    def launch(self) -> DaemonProcess:
        """As PoolerProcess.launch, with ``self.env`` added to the child's environment.

        A NOTIFY_SOCKET inherited from whatever runs the tests (a CI under systemd) is
        dropped, so only a test's own socket ever hears from the pooler.
        """
        env = client_env(**self.env)
        if "NOTIFY_SOCKET" not in self.env:
            env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [TWISTD, "-n", "pgpool", "-c", self.conf_path],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return self

    def rewrite(self, *lines: str) -> None:
        """pgpool.conf becomes the original lines plus ``lines`` (a later line wins)."""
        self.lines = self.base_lines + list(lines)
        with open(self.conf_path, "w", encoding="utf-8") as conf:
            conf.write("\n".join(self.lines) + "\n")

    def send(self, number: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        self.proc.send_signal(number)  # Popen only signals its own, unreaped child

    def mark(self) -> int:
        """Where the log ends now; pass to ``log_after`` to see only what comes later."""
        return len(self.log_text())

    def log_after(self, mark: int, text: str, timeout: float = 5.0) -> str:
        """The first log line after ``mark`` containing ``text``; fail if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text()[mark:].splitlines():
                if text in line:
                    return line
            if time.monotonic() >= deadline:
                self.testcase.fail(f"no log line with {text!r}; log tail:\n{self.log_tail()}")
            time.sleep(0.05)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def stop_child(child: subprocess.Popen[str]) -> None:
    """Kill a client we started, if it still runs, and reap it."""
    if child.poll() is None:
        child.kill()
        child.wait(10)


class DaemonTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()
        self.role = unique_name("e2e_d")
        self.db = unique_name("e2e_ddb")
        self.pg.create_role(self.role)
        self.pg.create_database(self.db, owner=self.role)

    def pooler(self, **settings: Setting) -> DaemonProcess:
        return DaemonProcess(self, settings).start()

    def connect(self, pooler: PoolerProcess) -> psycopg.Connection:
        dsn = f"host=127.0.0.1 port={pooler.port} user={self.role} dbname={self.db}"
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        self.addCleanup(conn.close)
        return conn

    def backend_pid(self, conn: psycopg.Connection) -> int:
        row = conn.execute(PID).fetchone()
        assert row is not None
        return int(row[0])

    def server_pids(self) -> set[int]:
        """Server pids PostgreSQL has for our role, asked directly, not through the pooler."""
        out = self.pg.psql(
            "select pid from pg_stat_activity where usename = :'u'", variables={"u": self.role}
        )
        return {int(line) for line in out.split()}

    def assert_servers_become(self, wanted: set[int], timeout: float = 5.0) -> None:
        if not wait_until(lambda: self.server_pids() == wanted, timeout, 0.1):
            self.fail(f"server pids for {self.role}: {self.server_pids()}, wanted {wanted}")


class ReloadTests(DaemonTestCase):
    def test_sighup_applies_settings_and_keeps_open_session(self) -> None:
        """SIGHUP applies log_connections and reset_query_list; an open session keeps its server."""
        pooler = self.pooler()
        held = self.connect(pooler)
        held_pid = self.backend_pid(held)
        show = "show search_path"
        first_pid, path = pooler.psql_ok(self.role, self.db, PID, show).splitlines()
        self.assertEqual(path, DEFAULT_SEARCH_PATH)
        self.assertNotIn("connected: user=", pooler.log_text())

        mark = pooler.mark()
        pooler.rewrite(
            "log_connections = on",
            "reset_query_list = 'ABORT; DISCARD ALL; SET search_path TO pg_catalog'",
        )
        pooler.send(signal.SIGHUP)
        pooler.log_after(mark, f"configuration reloaded from {pooler.conf_path}")

        # This session's server was reset by the old list when the first psql ended...
        out = pooler.psql_ok(self.role, self.db, PID, show).splitlines()
        self.assertEqual(out, [first_pid, DEFAULT_SEARCH_PATH])
        line = pooler.log_after(mark, "connected: user=")
        self.assertIn(f"user={self.role} database={self.db}", line)
        # ...and by the new one when it ended: the pooler does not reset again on reuse.
        out = pooler.psql_ok(self.role, self.db, PID, show).splitlines()
        self.assertEqual(out, [first_pid, "pg_catalog"])

        self.assertEqual(held.execute("select 1").fetchone(), (1,))
        self.assertEqual(self.backend_pid(held), held_pid)
        self.assertTrue(pooler.alive(), pooler.log_tail())

    def test_bad_reload_keeps_running_configuration(self) -> None:
        """A reload with a bad value is refused naming file, line and setting; serving goes on."""
        pooler = self.pooler()
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 1"), "1")
        mark = pooler.mark()
        pooler.rewrite("log_connections = on", "num_init_children = abc")
        line_number = pooler.line_of("num_init_children")
        pooler.send(signal.SIGHUP)
        line = pooler.log_after(mark, "reload failed")
        self.assertIn(f"{pooler.conf_path}:{line_number}: num_init_children", line)
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 1"), "1")
        self.assertTrue(pooler.alive(), pooler.log_tail())
        # Nothing of the refused file applied, not even its valid lines.
        self.assertNotIn("connected: user=", pooler.log_text()[mark:])
        self.assertNotIn("configuration reloaded", pooler.log_text()[mark:])

    def test_restart_only_setting_kept_others_applied(self) -> None:
        """A reload changing port logs that it needs a restart; the old port keeps serving."""
        pooler = self.pooler()
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 1"), "1")
        new_port = free_port()
        mark = pooler.mark()
        pooler.rewrite(f"port = {new_port}", "log_connections = on")
        pooler.send(signal.SIGHUP)
        line = pooler.log_after(mark, "port changed")
        self.assertIn("only after a restart", line)
        pooler.log_after(mark, "configuration reloaded")
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 1"), "1")
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 1", unix=True), "1")
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", new_port), timeout=1.0).close()
        # The rest of the file did apply.
        pooler.log_after(mark, f"connected: user={self.role}")

    def test_raising_num_init_children_admits_waiting_client(self) -> None:
        """Raising num_init_children by SIGHUP lets a client already waiting for a slot in."""
        pooler = self.pooler(num_init_children=1, log_connections="on")
        held = self.connect(pooler)
        self.backend_pid(held)
        mark = pooler.mark()
        argv = [pg_bin("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(pooler.port)]
        argv += ["-U", self.role, "-d", self.db, "-c", "select 7"]
        waiter = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=client_env(),
        )
        self.addCleanup(stop_child, waiter)
        pooler.log_after(mark, f"connected: user={self.role}")  # its startup was read
        time.sleep(0.3)
        self.assertIsNone(waiter.poll(), "the second client was not kept waiting")
        mark = pooler.mark()
        pooler.rewrite("num_init_children = 2")
        pooler.send(signal.SIGHUP)
        pooler.log_after(mark, "configuration reloaded")
        try:
            out, err = waiter.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            held.close()  # a freed slot lets it in, so this proves it was only waiting
            out, err = waiter.communicate(timeout=10)
            self.fail(f"the waiting client got in only once a session ended ({out.strip()!r})")
        self.assertEqual((waiter.returncode, out.strip()), (0, "7"), err)


class ShutdownTests(DaemonTestCase):
    def test_sigterm_waits_for_open_session(self) -> None:
        """SIGTERM stops accepting at once, lets an open session finish, then exits 0."""
        pooler = self.pooler()
        held = self.connect(pooler)
        held_pid = self.backend_pid(held)
        pooler.send(signal.SIGTERM)
        self.assertTrue(wait_until(lambda: not pooler.accepts(), 2.0), "still accepting")
        proc = pooler.psql(self.role, self.db, "select 1", unix=True)
        self.assertNotEqual(proc.returncode, 0, proc.stdout)
        self.assertEqual(held.execute("select 42").fetchone(), (42,))
        time.sleep(1.0)
        self.assertTrue(pooler.alive(), pooler.log_tail())
        self.assertEqual(self.backend_pid(held), held_pid)
        held.close()
        self.assertEqual(pooler.wait_exit(5.0), 0, pooler.log_tail())
        self.assert_servers_become(set())

    def test_smart_shutdown_timeout_ends_session(self) -> None:
        """With smart_shutdown_timeout = 1, SIGTERM ends an open session after ~1 s and exits."""
        pooler = self.pooler(smart_shutdown_timeout=1)
        held = self.connect(pooler)
        self.backend_pid(held)
        started = time.monotonic()
        pooler.send(signal.SIGTERM)
        time.sleep(0.3)
        self.assertEqual(held.execute("select 1").fetchone(), (1,))
        self.assertEqual(pooler.wait_exit(5.0), 0, pooler.log_tail())
        self.assertGreaterEqual(time.monotonic() - started, 0.9)
        self.assertIn("smart_shutdown_timeout reached", pooler.log_text())
        # The session was idle, so the FATAL reached it before the close.
        with self.assertRaises(psycopg.errors.AdminShutdown):
            held.execute("select 1")
        self.assert_servers_become(set())

    def test_client_idle_limit_applies_during_smart_wait(self) -> None:
        """During a smart shutdown client_idle_limit still ends an idle session, so it finishes."""
        pooler = self.pooler(client_idle_limit=1, smart_shutdown_timeout=30)
        held = self.connect(pooler)
        self.backend_pid(held)
        pooler.send(signal.SIGTERM)
        assert pooler.proc is not None
        try:
            status = pooler.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            pooler.send(signal.SIGINT)  # end it now rather than at smart_shutdown_timeout
            pooler.wait_exit(5.0)
            self.fail("an idle session kept a smart shutdown waiting past client_idle_limit")
        self.assertEqual(status, 0, pooler.log_tail())
        with self.assertRaises(psycopg.OperationalError) as caught:
            held.execute("select 1")
        self.assertEqual(caught.exception.sqlstate, "57P05")

    def test_sigint_terminates_sessions_with_57p01(self) -> None:
        """SIGINT gives an open session FATAL 57P01, closes its server and exits."""
        pooler = self.pooler()
        held = self.connect(pooler)
        self.backend_pid(held)
        pooler.psql_ok(self.role, self.db, "select 1")  # leaves an idle pooled server too
        self.assertEqual(len(self.server_pids()), 2)
        pooler.send(signal.SIGINT)
        self.assertEqual(pooler.wait_exit(5.0), 0, pooler.log_tail())
        with self.assertRaises(psycopg.errors.AdminShutdown) as caught:
            held.execute("select 1")
        self.assertEqual(caught.exception.sqlstate, "57P01")
        self.assertIn("terminating connection due to administrator command", str(caught.exception))
        self.assert_servers_become(set())

    def test_sigint_during_smart_wait_goes_fast(self) -> None:
        """SIGINT while a smart shutdown waits for a session ends that session and exits."""
        pooler = self.pooler()
        held = self.connect(pooler)
        self.backend_pid(held)
        pooler.send(signal.SIGTERM)
        self.assertTrue(wait_until(lambda: not pooler.accepts(), 2.0), "still accepting")
        self.assertEqual(held.execute("select 1").fetchone(), (1,))
        pooler.send(signal.SIGINT)
        self.assertEqual(pooler.wait_exit(5.0), 0, pooler.log_tail())
        with self.assertRaises(psycopg.OperationalError):
            held.execute("select 1")
        self.assert_servers_become(set())

    def test_sigquit_exits_at_once(self) -> None:
        """SIGQUIT exits at once and leaves no server connection behind."""
        pooler = self.pooler()
        held = self.connect(pooler)
        self.backend_pid(held)
        pooler.psql_ok(self.role, self.db, "select 1")
        started = time.monotonic()
        pooler.send(signal.SIGQUIT)
        pooler.wait_exit(3.0)
        self.assertLess(time.monotonic() - started, 3.0, pooler.log_tail())
        self.assert_servers_become(set())
        with self.assertRaises(psycopg.OperationalError):
            held.execute("select 1")


class CloseIdleTests(DaemonTestCase):
    def test_sigusr1_closes_idle_servers_only(self) -> None:
        """SIGUSR1 closes the idle pooled servers of a role; an attached server is untouched."""
        pooler = self.pooler()
        held = self.connect(pooler)
        held_pid = self.backend_pid(held)
        first, second = self.connect(pooler), self.connect(pooler)
        idle = {self.backend_pid(first), self.backend_pid(second)}
        first.close()
        second.close()

        def reset_done() -> bool:
            out = self.pg.psql(
                "select count(*) from pg_stat_activity where usename = :'u'"
                " and state = 'idle' and query = 'DISCARD ALL'",
                variables={"u": self.role},
            )
            return int(out) == 2

        self.assertTrue(wait_until(reset_done, 5.0, 0.05), "the two servers were not reset")
        time.sleep(0.2)  # ReadyForQuery of the reset on its way to the pooler
        self.assertEqual(self.server_pids(), idle | {held_pid})

        mark = pooler.mark()
        pooler.send(signal.SIGUSR1)
        self.assertIn("closed 2 idle", pooler.log_after(mark, "idle server connections"))
        self.assert_servers_become({held_pid})
        self.assertEqual(held.execute("select 1").fetchone(), (1,))
        self.assertEqual(self.backend_pid(held), held_pid)
        self.assertTrue(pooler.alive(), pooler.log_tail())


class NotifySocket:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.path = os.path.join(make_temp_dir(testcase, "pgtw-notify-"), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.sock.close)
        self.sock.bind(self.path)
        self.testcase = testcase

    def receive(self, timeout: float = 5.0) -> list[str]:
        """The next datagram's lines; fail if none comes within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            self.testcase.fail(f"no notify datagram within {timeout:g}s")
        return data.decode().split("\n")


class NotifyTests(DaemonTestCase):
    def test_systemd_notify_ready_reloading_stopping(self) -> None:
        """NOTIFY_SOCKET gets READY=1 once listening, RELOADING=1 then READY=1, STOPPING=1."""
        notify = NotifySocket(self)
        pooler = DaemonProcess(self, env={"NOTIFY_SOCKET": notify.path}).launch()
        assert pooler.proc is not None
        ready = notify.receive(START_TIMEOUT)
        self.assertEqual(ready, ["READY=1", f"MAINPID={pooler.proc.pid}"])
        self.assertTrue(pooler.accepts())
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 1"), "1")

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        pooler.send(signal.SIGHUP)
        reloading = notify.receive()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.assertEqual(len(reloading), 2, reloading)
        self.assertEqual(reloading[0], "RELOADING=1")
        name, _, usec = reloading[1].partition("=")
        self.assertEqual(name, "MONOTONIC_USEC")
        self.assertTrue(before <= int(usec) <= after, (before, usec, after))
        self.assertEqual(notify.receive(), ["READY=1"])

        pooler.send(signal.SIGTERM)
        self.assertEqual(notify.receive(), ["STOPPING=1"])
        self.assertEqual(pooler.wait_exit(5.0), 0, pooler.log_tail())
