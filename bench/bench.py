"""pgbench side by side: PostgreSQL, PgBouncer (session, transaction), pgpool-II, pgpool-tw.

Usage: ``bench/run [options]``, the options in ``options.py`` (``bench/run`` installs
what is missing, then runs this with the project's venv).

How a run goes:

1. A throwaway PostgreSQL (``pgpool_tw_dev.devdb.TempPostgres``, trust, max_connections=700,
   shared_buffers=256MB) and ``pgbench -i -s SCALE`` straight against it.
2. Every chosen target is started once and must answer ``psql -c 'select 1'`` (a target
   that does not start stops the run with its log tail, before any workload runs).
3. For each workload, each target in turn, the target order rotated by one per workload;
   pgpool-tw and pgbouncer-session run twice each, back to back in ABBA order, and their
   two runs are combined into one result (``run_order``, ``workloads.combine``).
   Each run gets a *fresh* target process: PostgreSQL's 700 connections cannot hold the
   idle server pools of several poolers after 500-client runs, and a fresh process makes
   every run start from the same state.  Before each run PostgreSQL's client backends
   have drained, and pgbench's own vacuum is done directly against PostgreSQL (pgbench
   runs with -n), so the pooler's measured CPU is the workload's alone.
4. CPU per transaction: run time (schedstat ns, plus reaped children) of the target's tree
   from /proc, read right before and after pgbench; for ``direct``, PostgreSQL's tree.
5. Unless --no-memory: 10,000 idle TCP clients to pgpool-tw and to pgbouncer, and
   their VmRSS before and after.

Must never: signal a process it did not start, listen off loopback, or print a table
after a target failed to start.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType
from typing import Optional

from memory import MemoryResult, measure_idle_clients, nofile_needed, raise_nofile
from options import parse_args
from procs import StartError, pg_bin, tree_cpu_ns
from report import as_json, markdown, program_version, python_versions
from targets import (
    MAX_CLIENT_CONN,
    SPARE_SLOTS,
    Launcher,
    Running,
    find_binary,
    missing_binaries,
)
from workloads import WORKLOADS, RunResult, Workload, combine, run_pgbench, warm_up

from pgpool_tw_dev.devdb import TempPostgres

RAMP_ROUND_S = 2  # a further warm-up round while a pooler's server count still grows
WARM_UP_LIMIT_S = 30.0
DRAIN_TIMEOUT = 30.0
PG_SETTINGS = {"max_connections": "700", "shared_buffers": "256MB"}
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A signal asked us to stop; cleanup runs in ``finally`` blocks on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def log(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def run_order(targets: list[str], index: int) -> list[str]:
    """The targets of the index-th workload, in the order they run.

    Each workload starts one target further along, so no target always runs first.
    pgpool-tw and pgbouncer-session, the pair the issue's targets compare, run twice
    each, back to back in ABBA order (BAAB in the next workload): this VM's speed
    drifts by tens of percent within minutes, a steady drift cancels out of ABBA,
    and each of the two is first and last by turns.
    """
    paired = "pgpool-tw" in targets and "pgbouncer-session" in targets
    others = [t for t in targets if t != "pgpool-tw"] if paired else list(targets)
    shift = index % len(others) if others else 0
    order = others[shift:] + others[:shift]
    if paired:
        at = order.index("pgbouncer-session")
        outer, inner = "pgbouncer-session", "pgpool-tw"
        if index % 2:
            outer, inner = inner, outer
        order[at : at + 1] = [outer, inner, inner, outer]
    return order


class Bench:
    """One benchmark run and everything it started, so that ``cleanup`` can stop it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.targets: list[str] = args.targets
        self.workloads: list[str] = args.workloads
        self.max_clients = max(WORKLOADS[name].clients for name in self.workloads)
        self.pg: Optional[TempPostgres] = None
        self.root = ""
        self.live: list[Running] = []
        self.pgbench: Optional[subprocess.Popen[str]] = None
        self.runs: list[RunResult] = []
        self.memory: list[MemoryResult] = []
        self.notes: list[str] = []
        self.started = time.monotonic()

    # -- the run --------------------------------------------------------------------------

    def run(self) -> int:
        missing = missing_binaries(self.targets)
        if missing:
            raise StartError(
                f"not installed: {', '.join(missing)} (needed by --targets); bench/run "
                "installs them, or choose other --targets"
            )
        limit, warning = raise_nofile(nofile_needed(self.args.idle_clients, MAX_CLIENT_CONN))
        if warning:
            log(warning)
            self.notes.append(warning)
        self.root = tempfile.mkdtemp(prefix="pgpool-tw-bench-", dir="/tmp")
        os.chmod(self.root, 0o755)  # pgbouncer and pgpool-II reach their dirs through it

        log("starting PostgreSQL")
        self.pg = TempPostgres(auth_method="trust", settings=PG_SETTINGS).start()
        self.pg.create_database("bench")
        self._pgbench_init()
        launcher = Launcher(self.pg, self.root, self.max_clients)

        for target in self.targets:
            log(f"checking that {target} starts")
            self._stop(self._start(launcher, target))

        orders = [run_order(self.targets, index) for index in range(len(self.workloads))]
        total = sum(len(order) for order in orders)
        done = 0
        for name, order in zip(self.workloads, orders):
            runs: dict[str, list[RunResult]] = {}
            for target in order:
                result = self._one_run(launcher, WORKLOADS[name], target)
                runs.setdefault(target, []).append(result)
                done += 1
                self._progress(result, done, total)
            self.runs += [combine(runs[target]) for target in self.targets]

        if not self.args.no_memory:
            self._memory(launcher, limit)

        self._report()
        return 0

    def _pgbench_init(self) -> None:
        assert self.pg is not None
        log(f"pgbench -i -s {self.args.scale}")
        argv = [pg_bin("pgbench"), "-i", "-q", "-s", str(self.args.scale)]
        argv += ["-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres", "bench"]
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench -i failed ({proc.returncode}):\n{proc.stderr}")

    def _one_run(self, launcher: Launcher, workload: Workload, target: str) -> RunResult:
        self._prepare_database()
        running = self._start(launcher, target)
        try:
            if self.args.warmup > 0:
                failed = self._warm_up(workload, target, running.port)
                if failed is not None:
                    return failed
            servers = None if target == "direct" else self._client_backends()
            before = tree_cpu_ns(running.cpu_pid)
            result = run_pgbench(
                workload, target, running.port, self.args.duration, self._track_pgbench
            )
            after = tree_cpu_ns(running.cpu_pid)
            server = running.server
            if server is not None and server.proc is not None and server.proc.poll() is not None:
                result.error = (
                    f"{target} exited ({server.proc.returncode}) during the run; "
                    f"log tail: {server.log_tail(5)}"
                )
                result.exit_status = result.exit_status or -1
            else:
                result.cpu_us = (after - before) / 1000
                result.cpu_of = running.cpu_of
            result.servers = servers
        finally:
            self._stop(running)
        return result

    def _warm_up(self, workload: Workload, target: str, port: int) -> Optional[RunResult]:
        """Bring a freshly started target to its steady state: None, or the failed run.

        First every client runs --warmup transactions.  A pooler that opens servers
        lazily (PgBouncer) may still hold fewer servers than clients then, since a client
        that finished hands its server to one still waiting; while that count grows, the
        workload runs on in rounds of RAMP_ROUND_S seconds, up to WARM_UP_LIMIT_S.  The
        timed run then measures what a long-running pooler does, not its first seconds.
        """
        failed = warm_up(workload, target, port, ["-t", str(self.args.warmup)], self._track_pgbench)
        if failed is not None or target == "direct":
            return failed
        deadline = time.monotonic() + WARM_UP_LIMIT_S
        held = self._client_backends()
        while held < workload.clients and time.monotonic() < deadline:
            length = ["-T", str(RAMP_ROUND_S)]
            failed = warm_up(workload, target, port, length, self._track_pgbench)
            if failed is not None:
                return failed
            now = self._client_backends()
            if now <= held:
                break
            held = now
        return None

    def _client_backends(self) -> int:
        """PostgreSQL's client backends, not counting the one that asks."""
        assert self.pg is not None
        count_sql = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();\n"
        )
        return int(self.pg.psql(count_sql).strip())

    def _prepare_database(self) -> None:
        """Wait for the last target's server connections to go; vacuum as pgbench would."""
        assert self.pg is not None
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            left = self._client_backends()
            if left == 0:
                break
            if time.monotonic() > deadline:
                note = f"{left} PostgreSQL client backends still open after {DRAIN_TIMEOUT:g}s"
                log(note)
                self.notes.append(note)
                break
            time.sleep(0.05)
        self.pg.psql(
            "VACUUM pgbench_branches;\nVACUUM pgbench_tellers;\n"
            "TRUNCATE pgbench_history;\nCHECKPOINT;\n",
            dbname="bench",
        )

    def _memory(self, launcher: Launcher, limit: int) -> None:
        wanted = []
        if "pgpool-tw" in self.targets:
            wanted.append(("pgpool-tw", "pgpool-tw"))
        if any(t.startswith("pgbouncer-") for t in self.targets):
            wanted.append(("pgbouncer", "pgbouncer-session"))
        clients = self.args.idle_clients
        for label, target in wanted:
            log(f"memory: {clients} idle clients to {label} (open-files limit {limit})")
            running = self._start(launcher, target, idle_clients=True)
            try:
                result = measure_idle_clients(label, running.cpu_pid, running.port, clients)
            finally:
                self._stop(running)
            if result.error:
                log(f"memory: {label}: {result.error}")
            self.memory.append(result)

    # -- targets and pgbench, tracked for cleanup -----------------------------------------

    def _start(self, launcher: Launcher, target: str, idle_clients: bool = False) -> Running:
        running = launcher.start(target, idle_clients=idle_clients)
        self.live.append(running)
        return running

    def _stop(self, running: Running) -> None:
        running.stop()
        if running in self.live:
            self.live.remove(running)

    def _track_pgbench(self, proc: Optional[subprocess.Popen[str]]) -> None:
        self.pgbench = proc

    def cleanup(self) -> None:
        """Stop pgbench, every target and PostgreSQL; remove the temp dir. Idempotent."""
        proc, self.pgbench = self.pgbench, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        while self.live:
            running = self.live.pop()
            try:
                running.stop()
            except Exception as e:  # keep cleaning up the rest
                log(f"could not stop {running.name}: {e}")
        if self.pg is not None:
            try:
                self.pg.stop()
            except Exception as e:
                log(f"could not stop PostgreSQL: {e}")
            self.pg = None
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = ""

    # -- output ---------------------------------------------------------------------------

    def _progress(self, result: RunResult, done: int, total: int) -> None:
        tps = "-" if result.tps is None else f"{result.tps:,.0f} tps"
        status = "ok" if result.ok else f"FAILED: {result.error or 'see report'}"
        log(
            f"[{done}/{total}] {result.workload} {result.target}: {tps}, "
            f"failed={result.failed}, exit={result.exit_status} ({result.wall_s:.1f}s) {status}"
        )

    def _meta(self) -> dict[str, object]:
        assert self.pg is not None
        versions = {"PostgreSQL": program_version([os.path.join(self.pg.bindir, "postgres"), "-V"])}
        for name, program in (("pgbouncer", "pgbouncer"), ("pgpool-II", "pgpool")):
            path = find_binary(program)
            versions[name] = program_version([path, "--version"]) if path else "not installed"
        versions.update(python_versions())
        meta: dict[str, object] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": len(os.sched_getaffinity(0)),
            "versions": versions,
            "targets": ",".join(self.targets),
            "workloads": ",".join(self.workloads),
            "duration_s": self.args.duration,
            "warm-up": (
                f"{self.args.warmup} transactions per client, untimed, on each freshly started "
                f"target, then {RAMP_ROUND_S}-second rounds while the count of servers it "
                f"holds grows (at most {WARM_UP_LIMIT_S:g} s)"
                if self.args.warmup
                else "none: each timed run starts on a freshly started target"
            ),
            "scale": self.args.scale,
            "pool sizing": (
                f"pgpool-II and pgpool-tw num_init_children={self.max_clients + SPARE_SLOTS} "
                f"max_pool=1; pgbouncer default_pool_size={self.max_clients + SPARE_SLOTS} "
                f"max_client_conn={MAX_CLIENT_CONN}"
            ),
            "method": (
                "a fresh target process per run; TPS as pgbench reports it (without initial "
                "connection time, except -C); CPU = run time of the target's process tree "
                "(PostgreSQL's for direct: every thread's schedstat, plus reaped children's "
                "cutime+cstime) over the run / transactions processed; pgbouncer-session "
                "and pgpool-tw run twice per workload, back to back in ABBA order, and "
                "their row is the mean TPS and latency of the two runs, with transactions, "
                "failures and CPU summed"
            ),
            "wall_time_s": round(time.monotonic() - self.started, 1),
        }
        if self.notes:
            meta["notes"] = "; ".join(self.notes)
        return meta

    def _report(self) -> None:
        meta = self._meta()
        text = markdown(meta, self.runs, self.memory, self.workloads, self.targets)
        out = os.path.abspath(self.args.out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        print(text, flush=True)
        log(f"wrote {out}")
        if self.args.json:
            json_path = os.path.splitext(out)[0] + ".json"
            with open(json_path, "w", encoding="utf-8") as f:
                f.write(as_json(meta, self.runs, self.memory))
            log(f"wrote {json_path}")


def _raise_interrupted(signum: int, frame: Optional[FrameType]) -> None:
    raise Interrupted(signum)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    for sig in _SIGNALS:
        signal.signal(sig, _raise_interrupted)
    bench = Bench(args)
    try:
        return bench.run()
    except StartError as e:
        print(f"\nBENCHMARK STOPPED: {e}", file=sys.stderr, flush=True)
        return 1
    except Interrupted as e:
        log(f"stopped by signal {signal.Signals(e.signum).name}; cleaning up")
        return 128 + e.signum
    finally:
        for sig in _SIGNALS:  # a second ^C must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
