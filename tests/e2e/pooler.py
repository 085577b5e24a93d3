"""A real ``twistd -n pgpool`` subprocess for the end-to-end tests, and the clients that drive it.

Owns: writing a pgpool.conf into a private temp dir, starting twistd on it with its output in a
log file, waiting until its TCP port accepts, stopping it by its own pid, and running psql and
pgbench against it with a clean environment.

Must never: signal any process but the twistd it started itself, listen or connect anywhere but
loopback and its own unix sockets, or let the caller's PG* environment redirect a client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Union

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.devdb import TempPostgres, client_env, free_port, pg_bin
from tests.support import unique_name

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
CLIENT_TIMEOUT = 60.0
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.65535"

Setting = Union[str, int, float]


def quote_conf(value: str) -> str:
    """A quoted pgpool.conf value: quotes doubled, backslashes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def make_temp_dir(testcase: SynchronousTestCase, prefix: str) -> str:
    """A private temp dir short enough for a unix socket path, removed after the test."""
    path = tempfile.mkdtemp(prefix=prefix)
    if len(path) > _MAX_SOCKET_PATH - 20:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


class PoolerProcess:
    """``twistd -n pgpool -c <dir>/pgpool.conf`` in front of ``pg``, stopped after the test.

    ``settings`` are written as ``name = value`` (strings quoted); ``raw_lines`` are written
    verbatim after them, for values the parser must reject.  ``launch()`` only starts the
    process; ``start()`` also waits until the TCP port accepts.
    """

    def __init__(
        self,
        testcase: SynchronousTestCase,
        pg: TempPostgres,
        settings: Optional[dict[str, Setting]] = None,
        raw_lines: Optional[list[str]] = None,
        port: Optional[int] = None,
        args: Optional[list[str]] = None,
    ) -> None:
        self.testcase = testcase
        #: Options given to ``twistd pgpool`` after ``-c``.
        self.args = list(args or [])
        self.dir = make_temp_dir(testcase, "pgpool-tw-e2e-")
        self.socket_dir = self.dir
        self.port = free_port() if port is None else port
        self.conf_path = os.path.join(self.dir, "pgpool.conf")
        self.log_path = os.path.join(self.dir, "twistd.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        values: dict[str, Setting] = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "socket_dir": self.socket_dir,
            "logdir": self.dir,  # pgpool_status: never shared with another pooler
            "backend_hostname0": pg.host,
            "backend_port0": pg.port,
        }
        values.update(settings or {})
        self.lines = ["# written by tests/e2e/pooler.py"]
        for name, value in values.items():
            text = quote_conf(value) if isinstance(value, str) else str(value)
            self.lines.append(f"{name} = {text}")
        self.lines += raw_lines or []
        with open(self.conf_path, "w", encoding="utf-8") as conf:
            conf.write("\n".join(self.lines) + "\n")
        testcase.addCleanup(self.stop)

    def line_of(self, text: str) -> int:
        """The 1-based line number of the first conf line that starts with ``text``."""
        for number, line in enumerate(self.lines, start=1):
            if line.startswith(text):
                return number
        raise KeyError(text)

    # -- lifecycle --------------------------------------------------------------------

    def launch(self) -> PoolerProcess:
        """Start twistd without waiting for it to listen."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [TWISTD, "-n", "pgpool", "-c", self.conf_path, *self.args],
                cwd=self.dir,  # twistd.pid goes here, and the checkout is not on sys.path
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=client_env(),
                start_new_session=True,  # a ^C to trial is not also delivered to twistd
            )
        return self

    def start(self) -> PoolerProcess:
        """Start twistd and wait until its TCP port accepts; fail with the log tail if not."""
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.testcase.fail(
                    f"twistd exited with {self.proc.returncode} before listening on "
                    f"127.0.0.1:{self.port}; log tail:\n{self.log_tail()}"
                )
            if self.accepts():
                return self
            time.sleep(0.05)
        self.testcase.fail(
            f"twistd did not listen on 127.0.0.1:{self.port} within {START_TIMEOUT:g}s; "
            f"log tail:\n{self.log_tail()}"
        )

    def restart(self, args: Optional[list[str]] = None) -> PoolerProcess:
        """Stop, then start again on the same file and port (``args`` replace the
        options); the log starts afresh."""
        self.stop()
        if args is not None:
            self.args = list(args)
        return self.start()

    def accepts(self) -> bool:
        """Whether a TCP connection to the pooler's port succeeds now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """Wait for twistd to exit by itself; fail (it is stopped at cleanup) if it does not."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.testcase.fail(
                f"twistd still running after {timeout:g}s; log tail:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM our twistd, wait, SIGKILL after STOP_TIMEOUT. Safe to call twice."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # Popen signals only its own child, and never one it has already reaped.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    # -- output -----------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """The first log line containing ``text``, waiting up to ``timeout``; fail if none."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if text in line:
                    return line
            if time.monotonic() >= deadline:
                self.testcase.fail(f"no log line with {text!r}; log tail:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- clients ----------------------------------------------------------------------

    def psql(
        self,
        user: str,
        dbname: str,
        *commands: str,
        unix: bool = False,
        env: Optional[dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """``psql -X -At`` with one ``-c`` per command, over TCP or the unix socket."""
        host = self.socket_dir if unix else "127.0.0.1"
        argv = [pg_bin("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", host, "-p", str(self.port), "-U", user, "-d", dbname]
        for command in commands:
            argv += ["-c", command]
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=client_env(**(env or {})),
            timeout=CLIENT_TIMEOUT,
        )

    def psql_ok(
        self,
        user: str,
        dbname: str,
        *commands: str,
        unix: bool = False,
        env: Optional[dict[str, str]] = None,
    ) -> str:
        """psql's stdout, stripped; fail the test with stderr and the log if psql failed."""
        proc = self.psql(user, dbname, *commands, unix=unix, env=env)
        if proc.returncode != 0:
            self.testcase.fail(
                f"psql {commands!r} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                f"pooler log tail:\n{self.log_tail()}"
            )
        return proc.stdout.strip()

    def pgbench(self, user: str, dbname: str, *args: str) -> subprocess.CompletedProcess[str]:
        """pgbench over TCP with ``args``; stdout and stderr together in ``.stdout``."""
        argv = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(self.port), "-U", user]
        argv += [*args, dbname]
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=client_env(),
            timeout=CLIENT_TIMEOUT * 2,
        )


def pgbench_database(pooler: PoolerProcess, pg: TempPostgres, prefix: str) -> tuple[str, str]:
    """A new role and database, `pgbench -i -s 1`-ed through ``pooler`` (a test class
    keeps the pair for its other tests)."""
    role, db = unique_name(f"{prefix}_u"), unique_name(f"{prefix}_db")
    pg.create_role(role)
    pg.create_database(db, owner=role)
    proc = pooler.pgbench(role, db, "-i", "-s", "1", "-q")
    pooler.testcase.assertEqual(proc.returncode, 0, proc.stdout + pooler.log_tail())
    return role, db
