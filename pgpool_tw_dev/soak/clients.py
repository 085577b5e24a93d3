"""The soak's load through the pooler: psycopg writers that commit one row per
transaction, churn clients (connect, a few statements, disconnect), COPY clients (a new
connection per COPY FROM STDIN), and pgbench in rounds; each notes its writes in the
ledger.

A client that meets an error closes its connection and starts again: faults make errors,
and the soak counts them but judges only the rows and the recovery times.

Must never: signal anything (pgbench is stopped through its Popen by ``stop``); talk to
anything but the pooler on loopback.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections import Counter
from typing import Any, Callable, Optional

from pgpool_tw_dev.devdb import pg_bin
from pgpool_tw_dev.soak.ledger import BenchRun, Ledger
from pgpool_tw_dev.soak.stage import DATABASE, USER, SoakPooler

#: pgbench's transaction: one row with a unique id, inside BEGIN ... END.
BENCH_SCRIPT = """\
BEGIN;
INSERT INTO soak_history (id, kind, run) VALUES (nextval('soak_bench_ids'), 'pgbench', :run);
SELECT count(*) FROM soak_history WHERE id = currval('soak_bench_ids');
END;
"""
BENCH_ROUND = 20  # seconds of each pgbench run
BENCH_CLIENTS = 3
BENCH_RATE = 40  # pgbench -R of each run
COPY_ROWS = 50
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_ABORTED = re.compile(r"client \d+ aborted")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:100]


class Worker:
    """A client thread: ``step`` once per loop until ``stop``; errors counted by kind."""

    name = "worker"
    pause = 0.05  # between two steps: a few hundred commits a second in all, not a flood

    def __init__(self, number: int, pooler: SoakPooler, ledger: Ledger) -> None:
        self.number = number
        self.pooler = pooler
        self.ledger = ledger
        self.stop = threading.Event()
        self.steps = 0
        self.errors: Counter[str] = Counter()
        #: When the step now running started (None between steps): a hung client shows.
        self.in_step: Optional[float] = None
        self.conn: Optional[Any] = None
        self.thread = threading.Thread(target=self._run, name=f"soak-{self.name}{number}")
        self.thread.daemon = True  # one stuck on a dead socket never keeps us alive

    def start(self) -> Worker:
        self.thread.start()
        return self

    @property
    def label(self) -> str:
        return f"{self.name}{self.number}"

    def connect(self, autocommit: bool) -> Any:
        import psycopg

        return psycopg.connect(self.pooler.dsn(f"soak_{self.label}"), autocommit=autocommit)

    def drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self.stop.is_set():
            self.in_step = time.monotonic()
            try:
                self.step()
                self.steps += 1
            except Exception as e:  # psycopg's errors: what the faults make
                self.errors[first_line(e)] += 1
                self.drop()
                self.stop.wait(0.1)
            finally:
                self.in_step = None
            self.stop.wait(self.pause)
        self.drop()


class Writer(Worker):
    """One row per transaction: INSERT, a SELECT, COMMIT; the id is acknowledged when
    COMMIT returns, in doubt when the connection fails during it."""

    name = "writer"

    def step(self) -> None:
        if self.conn is None:
            self.conn = self.connect(autocommit=False)
        conn = self.conn
        ids = self.ledger.new_ids(1)
        committing = False
        try:
            conn.execute("INSERT INTO soak_history (id, kind) VALUES (%s, 'tx')", (ids[0],))
            conn.execute("SELECT count(*) FROM soak_history WHERE id = %s", (ids[0],))
            committing = True
            conn.commit()
        except BaseException:
            (self.ledger.doubt if committing else self.ledger.abort)(ids)
            raise
        self.ledger.ack(ids)


class Churn(Worker):
    """A short session: connect, three statements, disconnect."""

    name = "churn"

    def step(self) -> None:
        self.conn = self.connect(autocommit=True)
        self.conn.execute("SELECT 1").fetchall()
        self.conn.execute("SELECT count(*) FROM soak_history WHERE id < 100").fetchall()
        self.conn.execute("SHOW server_version").fetchall()
        self.drop()


class Copier(Worker):
    """A short session that COPYs 50 rows FROM STDIN (its own transaction): acknowledged
    when the COPY's CommandComplete comes back, in doubt when it fails after CopyDone."""

    name = "copy"
    pause = 0.2

    def step(self) -> None:
        self.conn = self.connect(autocommit=True)
        ids = self.ledger.new_ids(COPY_ROWS)
        ending = False
        try:
            cur = self.conn.cursor()
            with cur.copy("COPY soak_history (id, kind) FROM STDIN") as copy:
                for row_id in ids:
                    copy.write_row((row_id, "copy"))
                ending = True  # leaving the block sends CopyDone and waits
        except BaseException:
            (self.ledger.doubt if ending else self.ledger.abort)(ids)
            raise
        self.ledger.ack(ids)
        self.drop()


class BenchRounds:
    """pgbench runs of BENCH_ROUND seconds, one after the other until ``until``; each
    run's rows carry its number."""

    def __init__(self, pooler: SoakPooler, ledger: Ledger, directory: str, first_run: int) -> None:
        self.pooler = pooler
        self.ledger = ledger
        self.script = os.path.join(directory, "soak_bench.sql")
        with open(self.script, "w", encoding="utf-8") as f:
            f.write(BENCH_SCRIPT)
        self.next_run = first_run
        self.until = 0.0
        self.proc: Optional[subprocess.Popen[str]] = None
        self.stop_now = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self, until: float) -> BenchRounds:
        self.until = until
        self.stop_now.clear()
        self.thread = threading.Thread(target=self._run, name="soak-pgbench", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float) -> bool:
        """Wait for the last run to end; False if it did not in time (then it is killed)."""
        if self.thread is None:
            return True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.stop_now.set()
            self.thread.join(10)
            return False
        return True

    def _run(self) -> None:
        while not self.stop_now.is_set():
            seconds = int(min(BENCH_ROUND, self.until - time.monotonic()))
            if seconds < 2:
                return
            run = self._one(self.next_run, seconds)
            self.ledger.bench(run)
            self.next_run += 1
            if not run.summary:
                self.stop_now.wait(1.0)  # it could not connect: not again at once

    def _one(self, number: int, seconds: int) -> BenchRun:
        run = BenchRun(number)
        argv = [pg_bin("pgbench"), "-n", "-h", "127.0.0.1", "-p", str(self.pooler.port)]
        argv += ["-U", USER, "-c", str(BENCH_CLIENTS), "-R", str(BENCH_RATE)]
        argv += ["-T", str(seconds), "-f", self.script, "-D", f"run={number}", DATABASE]
        self.proc = proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.pooler.client_env("soak_pgbench"),
            start_new_session=True,
        )
        deadline = time.monotonic() + seconds + 60
        while proc.poll() is None:
            if self.stop_now.is_set() or time.monotonic() > deadline:
                proc.kill()  # our own child, by its Popen
                run.killed = True
                run.note = "hung: killed"
                break
            time.sleep(0.2)
        out, err = proc.communicate()
        found = _PROCESSED.search(out)
        if found and not run.killed:
            run.summary = True
            run.processed = int(found.group(1))
        run.aborted_clients = len(_ABORTED.findall(err))
        if not run.summary and not run.killed:
            lines = [line for line in err.splitlines() if line.strip()]
            run.note = lines[-1][:120] if lines else f"exit {proc.returncode}"
        return run


def client_errors(workers: list[Worker]) -> Counter[str]:
    total: Counter[str] = Counter()
    for worker in workers:
        total.update(worker.errors)
    return total


def stop_workers(workers: list[Worker], timeout: float, say: Callable[[str], None]) -> list[str]:
    """Ask every worker to stop and wait; the labels of those still stuck in a step."""
    for worker in workers:
        worker.stop.set()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [w.label for w in workers if w.thread.is_alive()]
    if stuck:
        say(f"clients stuck in a step after {timeout:g}s: {', '.join(stuck)}")
    return stuck
