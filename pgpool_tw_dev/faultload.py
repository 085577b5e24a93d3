"""The load and the processes of one fault scenario (``faults.py``): a real ``twistd
pgpool`` (``Pooler``), pgbench runs (``Pgbench``), probe clients that read and write every
20 ms (``Probe``), the pooler's log as it grows (``LogWatch``), and the arithmetic that
turns the probes' operations into seconds to clean service (``clean_service_after``,
``outage``).

Must never: signal a process it did not start (the pooler and pgbench by their Popen
objects), or talk to anything but loopback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from pgpool_tw_dev.devdb import (
    TempPostgres,
    client_env,
    free_port,
    pg_bin,
    quote_conf,
)

#: failover_command's arguments, in pgpool-II's usual order (failover.sh.sample's).
ESCAPES = "%d %h %p %D %m %H %M %P %r %R %N %S"
#: A probe operation slower than this is a stall: service is not clean while it lasts
#: (one takes a few milliseconds; a failover makes a write wait for the promotion).
SLOW = 0.5
#: How long the probes must then succeed, reads and writes, for service to count as clean.
CLEAN_WINDOW = 2.0
PROBE_SLEEP = 0.02
PROBE_CONNECT_TIMEOUT = 5  # libpq's connect_timeout, whole seconds
POOLER_START_TIMEOUT = 30.0
POOLER_STOP_TIMEOUT = 15.0
CLIENT_TIMEOUT = 120.0

_ABORTED = re.compile(r"client \d+ (?:script \d+ )?aborted")
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_DETACHED = re.compile(r"failover: node (\d+) \(.*\) detached")
_PRIMARY_FOUND = re.compile(r"failover: node (\d+) \(.*\) is the primary")
_PROBLEM = re.compile(r"Traceback|Unhandled|#critical\]|#error\]")

#: The standby's application_name (backend_application_name1).
STANDBY_NAME = "replica1"


# -- measurement --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    """One probe operation: ``kind`` is connect, read or write; times are monotonic."""

    kind: str
    start: float
    end: float
    error: Optional[str] = None


def clean_service_after(
    ops: Sequence[Op],
    injected: float,
    now: float,
    in_flight: Sequence[float] = (),
    slow: float = SLOW,
    window: float = CLEAN_WINDOW,
) -> Optional[float]:
    """Seconds from ``injected`` to the start of clean service, or None if not clean yet.

    Service turns clean at the end of the last operation, ending after the fault, that
    failed or stalled (took longer than ``slow``), or at the fault itself if none did; it
    counts only once ``window`` seconds have passed since then with at least one read and
    one write that started after it and succeeded, and with no operation in flight (their
    start times) for longer than ``slow`` at ``now``.
    """
    if any(now - started > slow for started in in_flight):
        return None
    bad_end = injected
    for op in ops:
        if op.end > injected and (op.error is not None or op.end - op.start > slow):
            bad_end = max(bad_end, op.end)
    if now - bad_end < window:
        return None
    good = {op.kind for op in ops if op.error is None and op.start >= bad_end and op.end <= now}
    if not {"read", "write"} <= good:
        return None
    return bad_end - injected


def outage(ops: Sequence[Op], kind: str, injected: float, now: float) -> float:
    """The longest time, ending after ``injected``, in which no ``kind`` operation of one
    client (``ops`` are its) succeeded: from one success's end to the next's, the last
    one's to ``now``."""
    ends = sorted(op.end for op in ops if op.kind == kind and op.error is None)
    starts = [e for e in ends if e <= injected][-1:] or [injected]
    times = starts + [e for e in ends if e > injected] + [now]
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


class Probe:
    """A client that connects, reads, writes, sleeps 20 ms and again, reconnecting after
    an error; every operation is kept as an :class:`Op` (none once ``stop`` is set, so a
    teardown is never counted as an error)."""

    def __init__(self, number: int, dsn: str, stop: threading.Event) -> None:
        self.number = number
        self.dsn = dsn
        self.stop = stop
        self.ops: list[Op] = []
        #: When the operation now running started (None between operations).
        self.in_flight: Optional[float] = None
        self.thread = threading.Thread(target=self._run, name=f"faults-probe-{number}")
        self.thread.daemon = True  # one stuck on a hung socket never keeps us alive

    def start(self) -> Probe:
        self.thread.start()
        return self

    def _op(self, kind: str, work: Callable[[], Any]) -> bool:
        started = time.monotonic()
        self.in_flight = started
        error: Optional[str] = None
        try:
            work()
        except Exception as e:  # psycopg's errors, and a socket's
            text = str(e).strip()
            error = text.splitlines()[0] if text else type(e).__name__
        finally:
            self.in_flight = None
        if not self.stop.is_set():
            self.ops.append(Op(kind, started, time.monotonic(), error))
        return error is None

    def _run(self) -> None:
        import psycopg

        conn: Optional[Any] = None

        def connect() -> None:
            nonlocal conn
            conn = psycopg.connect(self.dsn, autocommit=True)

        def read() -> None:
            assert conn is not None
            conn.execute("SELECT count(*) FROM pgbench_branches").fetchall()

        def write() -> None:
            assert conn is not None
            conn.execute("INSERT INTO faults_probe (probe) VALUES (%s)", (self.number,))

        while not self.stop.is_set():
            ok = (conn is not None or self._op("connect", connect)) and (
                self._op("read", read) and self._op("write", write)
            )
            if not ok and conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            self.stop.wait(PROBE_SLEEP)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


# -- processes ----------------------------------------------------------------------------


def _twistd_argv(conf: str) -> list[str]:
    """``twistd -n pgpool -c conf`` from the venv we run in."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(twistd):
        return [twistd, "-n", "pgpool", "-c", conf]
    # A python without the script beside it: twistd's own entry point.
    run = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    return [sys.executable, "-c", run, "-n", "pgpool", "-c", conf]


def start_twistd(conf_path: str, directory: str, log_path: str) -> subprocess.Popen[bytes]:
    """``twistd -n pgpool -c conf_path`` in ``directory`` (its twistd.pid goes there),
    logging to ``log_path``, in a session of its own (a ^C reaches us, and we stop it);
    returned once its log says it listens (RuntimeError with the log's tail if it exits
    or does not within POOLER_START_TIMEOUT)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            _twistd_argv(conf_path),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=client_env(),
            start_new_session=True,
        )
    deadline = time.monotonic() + POOLER_START_TIMEOUT
    while "pgpool-tw listening on" not in read_text(log_path):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(read_text(log_path).splitlines()[-30:])
            raise RuntimeError(f"pgpool-tw did not start; log tail:\n{tail}")
        time.sleep(0.05)
    return proc


def read_text(path: str) -> str:
    """A file's text ('' when it is not there)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _stop_child(proc: subprocess.Popen[Any], sig: int, wait: float) -> None:
    """Signal our own child, wait, then SIGKILL it (Popen never signals a reaped pid)."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(wait)


class Pooler:
    """``twistd -n pgpool`` in front of a primary (node 0) and its standby (node 1)."""

    def __init__(
        self,
        directory: str,
        primary: TempPostgres,
        standby: TempPostgres,
        children: int,
        read_your_writes: bool = False,
    ) -> None:
        self.dir = directory
        self.port = free_port()
        self.conf_path = os.path.join(directory, "pgpool.conf")
        self.log_path = os.path.join(directory, "pgpool.log")
        self.record_path = os.path.join(directory, "failover.args")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        script = self._write_failover_script(primary)
        lines = [
            "# written by pgpool_tw_dev/faults.py",
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"socket_dir = {quote_conf(directory)}",
        ]
        for index, pg in enumerate((primary, standby)):
            lines += [
                f"backend_hostname{index} = {quote_conf(pg.host)}",
                f"backend_port{index} = {pg.port}",
                f"backend_data_directory{index} = {quote_conf(pg.data_dir)}",
            ]
        lines += [
            f"backend_application_name1 = {quote_conf(STANDBY_NAME)}",
            "sr_check_user = 'postgres'",
            "sr_check_period = 1",
            "health_check_period = 1",
            "health_check_user = 'postgres'",
            "health_check_timeout = 2",
            "health_check_max_retries = 1",
            "health_check_retry_delay = 1",
            "connect_timeout = 1000",
            f"logdir = {quote_conf(directory)}",
            f"failover_command = {quote_conf(f'{script} {ESCAPES}')}",
            f"num_init_children = {children}",
            f"read_your_writes = {'on' if read_your_writes else 'off'}",
        ]
        with open(self.conf_path, "w", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def _write_failover_script(self, server: TempPostgres) -> str:
        """Records its arguments; when the failed node was the primary (%d = %P), promotes
        the new main node's data directory (%R) with pg_ctl as the server's OS user."""
        pg_ctl = shlex.join(server.run_as_server_argv([pg_bin("pg_ctl")]))
        path = os.path.join(self.dir, "failover.sh")
        with open(path, "w", encoding="utf-8") as script:
            script.write(
                "#!/bin/sh\n"
                f'printf "%s\\n" "$*" >> {shlex.quote(self.record_path)}\n'
                'if [ "$1" = "$8" ] && [ -n "${10}" ]; then\n'
                f'    exec {pg_ctl} promote -w -t 60 -D "${{10}}"\n'
                "fi\n"
            )
        os.chmod(path, 0o755)
        return path

    def start(self) -> Pooler:
        """Start twistd; return once its log says it listens (RuntimeError with the log
        tail if it exits or does not within POOLER_START_TIMEOUT)."""
        self.proc = start_twistd(self.conf_path, self.dir, self.log_path)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """A fast shutdown (SIGINT, as pgpool-II's -m fast), SIGKILL if it hangs."""
        if self.proc is not None:
            _stop_child(self.proc, signal.SIGINT, POOLER_STOP_TIMEOUT)

    def log_text(self) -> str:
        return read_text(self.log_path)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def dsn(self, application_name: str) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres "
            f"connect_timeout={PROBE_CONNECT_TIMEOUT} application_name={application_name}"
        )

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        argv = [pg_bin("psql"), "-X", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        return subprocess.run(
            argv + ["-c", sql],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=CLIENT_TIMEOUT,
        )

    def pgbench_init(self) -> None:
        argv = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        argv += ["-i", "-s", "1", "-q", "postgres"]
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=CLIENT_TIMEOUT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench -i through the pooler failed: {proc.stderr.strip()}")

    def pool_nodes(self) -> list[dict[str, str]]:
        """SHOW pool_nodes through the pooler (empty when it does not answer)."""
        try:
            proc = self.psql("SHOW pool_nodes")
        except subprocess.TimeoutExpired:
            return []
        lines = proc.stdout.splitlines() if proc.returncode == 0 else []
        if len(lines) < 2:
            return []
        names = lines[0].split("|")
        return [dict(zip(names, line.split("|"))) for line in lines[1:] if "|" in line]


class Pgbench:
    """A background pgbench through the pooler, its output in files."""

    def __init__(self, name: str, args: list[str], port: int, directory: str, seconds: int) -> None:
        self.name = name
        self.out_path = os.path.join(directory, f"{name}.out")
        self.err_path = os.path.join(directory, f"{name}.err")
        self.killed = False
        argv = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        argv += ["-n", *args, "-T", str(seconds), "postgres"]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=client_env(PGAPPNAME=name),
                start_new_session=True,
            )

    def done(self) -> bool:
        return self.proc.poll() is not None

    def stop(self) -> None:
        if not self.done():
            self.killed = True
            _stop_child(self.proc, signal.SIGTERM, 5.0)

    def aborted(self) -> int:
        """Clients aborted by an error ("client N aborted in command ...")."""
        return len(_ABORTED.findall(read_text(self.err_path)))

    def failed(self) -> Optional[int]:
        """pgbench's failed transactions (None: it printed no summary)."""
        found = _FAILED.search(read_text(self.out_path))
        return int(found.group(1)) if found else None


class LogWatch:
    """Reads the pooler's log as it grows and notes when nodes were detached or found
    primary (monotonic times), and lines that show a pooler bug."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.detached: dict[int, float] = {}
        self.primary_found: dict[int, float] = {}
        self.problems: list[str] = []

    def poll(self) -> None:
        now = time.monotonic()
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        raw = (self.partial + data).split(b"\n")
        self.partial = raw.pop()  # a line still being written
        for line in (chunk.decode("utf-8", "replace") for chunk in raw):
            found = _DETACHED.search(line)
            if found:
                self.detached.setdefault(int(found.group(1)), now)
            found = _PRIMARY_FOUND.search(line)
            if found:
                self.primary_found.setdefault(int(found.group(1)), now)
            if _PROBLEM.search(line) and len(self.problems) < 20:
                self.problems.append(line.strip())
