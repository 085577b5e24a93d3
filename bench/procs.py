"""Processes the benchmark starts, and what it reads about them from /proc.

Owns: starting a server subprocess (optionally as the ``postgres`` OS user) with its
output in a log file, waiting for it to answer ``psql -c 'select 1'``, stopping it again
(SIGTERM, then SIGKILL of it and of its descendants, all by pid), and reading a process
tree's CPU time, a process's resident memory and its open file descriptors.

Must never: signal a process it did not start (or that is not a descendant of one it
started), or import Twisted.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
from typing import Optional

from pgpool_tw_dev.devdb import client_env, pg_bin

_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_HAVE_SCHEDSTAT = os.path.exists("/proc/self/schedstat")
STOP_WAIT = 15.0  # seconds between SIGTERM and SIGKILL
READY_TIMEOUT = 60.0  # pgpool-II forks num_init_children children before it answers

SERVER_USER = "postgres"  # pgbouncer refuses root; pgpool-II runs as it too


class StartError(RuntimeError):
    """A target did not start: the message names it and holds its log tail."""


def server_user() -> Optional[pwd.struct_passwd]:
    """The OS user to run pgbouncer and pgpool-II as: ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, but there is no {SERVER_USER!r} OS user to run "
            "pgbouncer and pgpool-II as (pgbouncer refuses to run as root)"
        ) from None


def give_to(path: str, user: Optional[pwd.struct_passwd]) -> None:
    """chown ``path`` and everything in it to ``user`` (no-op when user is None)."""
    if user is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)


# -- /proc readers ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the ``(comm)`` one (comm may hold spaces)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue  # it exited while we looked
        children.setdefault(ppid, []).append(int(entry))
    out = [pid]
    for parent in out:  # grows while we walk it: a breadth-first walk
        out.extend(children.get(parent, []))
    return out


def _process_cpu_ns(pid: int) -> int:
    """CPU time of ``pid`` itself, in ns: its threads' run time from schedstat.

    /proc/<pid>/stat reports utime and stime truncated to whole clock ticks (10 ms)
    per process: summed over pgpool-II's hundreds of children, each of which runs a
    few ms per second, that truncation hides nearly all of it.  schedstat's first
    field is the thread's run time in ns.  Without schedstat, fall back to stat.
    """
    if not _HAVE_SCHEDSTAT:
        return sum(int(v) for v in _stat_fields(pid)[11:13]) * _NS_PER_TICK
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread exited while we looked
    return total


def tree_cpu_ns(pid: int) -> int:
    """CPU time (user + system, ns) of ``pid``'s tree, children it reaped included.

    The run time of every live process in the tree, plus each one's cutime+cstime
    (the CPU of children it has already reaped), so a PostgreSQL backend or a
    pgpool-II child that exits during a run still counts.
    """
    total = 0
    for member in descendants(pid):
        try:
            reaped = sum(int(v) for v in _stat_fields(member)[13:15]) * _NS_PER_TICK
            total += _process_cpu_ns(member) + reaped
        except (OSError, ValueError, IndexError):
            continue  # it exited while we looked: its parent's cutime has it now
    return total


def start_time(pid: int) -> Optional[int]:
    """The start time of ``pid`` (clock ticks after boot), or None when it is gone.

    A pid plus its start time names one process even after the pid is reused.
    """
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def fd_count(pid: int) -> int:
    """How many file descriptors ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- a server we started ------------------------------------------------------------------


class Server:
    """One subprocess we started, its log file, and how to reach it with psql."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: str,
        log_path: str,
        port: int,
        user: Optional[pwd.struct_passwd] = None,
        env: Optional[dict[str, str]] = None,
    ) -> None:
        self.name = name
        self.env = env or {}
        self.argv = argv
        self.workdir = workdir
        self.log_path = log_path
        self.port = port
        self.user = user
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Server:
        """Launch and wait until ``psql -c 'select 1'`` through it works; else StartError."""
        user = self.user
        with open(self.log_path, "ab") as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**client_env(), **self.env},
                    start_new_session=True,  # a ^C to the benchmark is ours to handle
                    user=None if user is None else user.pw_uid,
                    group=None if user is None else user.pw_gid,
                    extra_groups=None if user is None else [],
                )
            except OSError as e:
                raise StartError(f"target {self.name}: cannot run {self.argv[0]}: {e}") from e
        try:
            self._wait_ready()
        except BaseException:  # not ready, or a signal: it must not outlive this call
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(
                    f"target {self.name} exited with status {self.proc.returncode} before "
                    f"accepting connections; log tail ({self.log_path}):\n{self.log_tail()}"
                )
            ok, last = select_one(self.port)
            if ok:
                return
            time.sleep(0.1)
        raise StartError(
            f"target {self.name} did not answer psql -c 'select 1' on 127.0.0.1:{self.port} "
            f"within {READY_TIMEOUT:g}s (last psql error: {last}); "
            f"log tail ({self.log_path}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM our pid; after STOP_WAIT, SIGKILL it and its descendants. Idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # Named before it dies, as (pid, start time): its children get re-parented.
        tree = [(pid, start_time(pid)) for pid in descendants(proc.pid)[1:]]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_WAIT)
        for pid, started in tree:  # children a SIGKILLed parent left behind
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:]).rstrip()
        except OSError as e:
            return f"(no log: {e})"


def select_one(port: int, dbname: str = "bench") -> tuple[bool, str]:
    """Whether ``psql -c 'select 1'`` over TCP to 127.0.0.1:port succeeds, and its stderr."""
    argv = [pg_bin("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(port)]
    argv += ["-U", "postgres", "-d", dbname, "-c", "select 1"]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return False, "psql timed out"
    return proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr.strip()
