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

Routed workloads (R1..R3, issue #16) run only when named.  For them a real streaming
replica of the PostgreSQL above is made after ``pgbench -i`` (``pgpool_tw_dev.replica``:
pg_basebackup -R, then started), and only the poolers that route run them, each with both
nodes and the same routing settings (``Launcher.routing_settings``), plus single-backend
pgpool-tw for the select-only ones.  Their order is a palindrome (``routed_order``): every
target runs twice, and a steady drift cancels out of every ratio between them.  Before
each run the replica has replayed the primary's WAL and both nodes' client backends have
drained; each node's committed transactions (pg_stat_database) are read before the
warm-up and after the pooler has stopped, to show where the reads went.

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
    PAIRS,
    ROUTING_TARGETS,
    SINGLE,
    Launcher,
    Running,
    find_binary,
    missing_binaries,
    pool_sizing,
)
from workloads import WORKLOADS, RunResult, Workload, combine, run_pgbench, warm_up

from pgpool_tw_dev.devdb import TempPostgres
from pgpool_tw_dev.replica import start_replica, wait_replayed

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
    Each pair of ``PAIRS`` that is chosen whole (PgBouncer and pgpool-tw in one pool
    mode: the pairs the issues' targets compare) runs twice, back to back in ABBA order
    (BAAB in the next workload): this VM's speed drifts by tens of percent within
    minutes, a steady drift cancels out of ABBA, and each of the two is first and last
    by turns.
    """
    pairs = [(bouncer, tw) for bouncer, tw in PAIRS if bouncer in targets and tw in targets]
    inside = {tw for _, tw in pairs}
    others = [t for t in targets if t not in inside]
    shift = index % len(others) if others else 0
    order = others[shift:] + others[:shift]
    for outer, inner in pairs:
        at = order.index(outer)
        if index % 2:
            outer, inner = inner, outer
        order[at : at + 1] = [outer, inner, inner, outer]
    return order


def routed_order(targets: list[str], index: int, single: bool) -> list[str]:
    """The targets of the index-th workload when it is routed, in the order they run.

    Only the poolers that route take part, and single-backend pgpool-tw too when
    ``single`` and pgpool-tw is chosen.  The order is a palindrome, rotated by one per
    workload: every target runs twice and each target's two runs sit as far from the
    middle as each other's, so a steady drift of the machine's speed cancels out of
    every ratio between them (ABBA, for more than two).
    """
    chosen = [t for t in targets if t in ROUTING_TARGETS]
    if single and "pgpool-tw" in chosen:
        at = chosen.index("pgpool-tw")
        chosen[at + 1 : at + 1] = [SINGLE]
    shift = index % len(chosen) if chosen else 0
    half = chosen[shift:] + chosen[:shift]
    return half + half[::-1]


def order_of(workload: Workload, targets: list[str], index: int) -> list[str]:
    """The targets of the index-th workload, routed or not, in the order they run."""
    if workload.routed:
        return routed_order(targets, index, workload.single_too)
    return run_order(targets, index)


class Bench:
    """One benchmark run and everything it started, so that ``cleanup`` can stop it all."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.targets: list[str] = args.targets
        self.workloads: list[str] = args.workloads
        self.max_clients = max(WORKLOADS[name].clients for name in self.workloads)
        self.pg: Optional[TempPostgres] = None
        self.replica: Optional[TempPostgres] = None
        self.routed = any(WORKLOADS[name].routed for name in self.workloads)
        self.root = ""
        self.live: list[Running] = []
        self.pgbench: Optional[subprocess.Popen[str]] = None
        self.runs: list[RunResult] = []
        self.memory: list[MemoryResult] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self.warmed = 0  # transactions the last warm-up processed

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
        if self.routed:
            log("starting a streaming replica (pg_basebackup -R)")
            self.replica = start_replica(self.pg, settings=PG_SETTINGS)
            wait_replayed(self.pg, self.replica)
        launcher = Launcher(self.pg, self.root, self.max_clients, self.replica)

        workloads = [WORKLOADS[name] for name in self.workloads]
        orders = [order_of(w, self.targets, index) for index, w in enumerate(workloads)]
        for workload, order in zip(workloads, orders):
            if not order:
                raise StartError(
                    f"workload {workload.name} is routed: it needs one of "
                    f"{', '.join(ROUTING_TARGETS)} among --targets"
                )
        starts = dict.fromkeys((t, w.routed) for w, order in zip(workloads, orders) for t in order)
        for target, routed in starts:
            both = routed and target != SINGLE
            log(f"checking that {target} starts" + (" with both nodes" if both else ""))
            self._stop(self._start(launcher, target, routed=routed))

        total = sum(len(order) for order in orders)
        done = 0
        for workload, order in zip(workloads, orders):
            runs: dict[str, list[RunResult]] = {}
            for target in order:
                result = self._one_run(launcher, workload, target)
                runs.setdefault(target, []).append(result)
                done += 1
                self._progress(result, done, total)
            self.runs += [combine(runs[target]) for target in dict.fromkeys(order)]

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
        commits = self._node_commits() if workload.routed else None
        running = self._start(launcher, target, routed=workload.routed)
        try:
            if self.args.warmup > 0:
                failed = self._warm_up(workload, target, running.port)
                if failed is not None:
                    return failed
            servers = None if target == "direct" else self._client_backends()
            replica_servers = self._client_backends(self.replica) if workload.routed else None
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
            result.replica_servers = replica_servers
            result.warmup_processed = self.warmed if self.args.warmup > 0 else 0
        finally:
            self._stop(running)
        if commits is not None:
            self._drain()
            ended = self._node_commits()
            result.node_commits = [end - start for start, end in zip(commits, ended)]
        return result

    def _node_commits(self) -> list[int]:
        """Transactions each node has committed so far, all databases, primary first.

        A backend's counts reach pg_stat_database when it ends at the latest, so they are
        read with no pooler running and every client backend gone.
        """
        nodes = [node for node in (self.pg, self.replica) if node is not None]
        sql = "SELECT sum(xact_commit) FROM pg_stat_database;\n"
        return [int(node.psql(sql).strip()) for node in nodes]

    def _warm_up(self, workload: Workload, target: str, port: int) -> Optional[RunResult]:
        """Bring a freshly started target to its steady state: None, or the failed run.

        First every client runs --warmup transactions.  A pooler that opens servers
        lazily (PgBouncer) may still hold fewer servers than clients then, since a client
        that finished hands its server to one still waiting; while that count grows, the
        workload runs on in rounds of RAMP_ROUND_S seconds, up to WARM_UP_LIMIT_S.  The
        timed run then measures what a long-running pooler does, not its first seconds.
        Routed, a session may hold a server on either node or both, so both nodes count.
        The transactions the warm-up processed are kept in ``self.warmed``.
        """
        self.warmed = 0
        length = ["-t", str(self.args.warmup)]
        result = warm_up(workload, target, port, length, self._track_pgbench)
        self.warmed += result.processed or 0
        if not result.ok or target == "direct":
            return None if result.ok else result
        deadline = time.monotonic() + WARM_UP_LIMIT_S
        held = self._held(workload)
        while held < workload.clients and time.monotonic() < deadline:
            length = ["-T", str(RAMP_ROUND_S)]
            result = warm_up(workload, target, port, length, self._track_pgbench)
            self.warmed += result.processed or 0
            if not result.ok:
                return result
            now = self._held(workload)
            if now <= held:
                break
            held = now
        return None

    def _held(self, workload: Workload) -> int:
        """Server connections the pooler holds: the primary's, and the replica's if routed."""
        held = self._client_backends()
        if workload.routed and self.replica is not None:
            held += self._client_backends(self.replica)
        return held

    def _client_backends(self, node: Optional[TempPostgres] = None) -> int:
        """A node's client backends (the primary's by default), not counting the one that asks."""
        node = node or self.pg
        assert node is not None
        count_sql = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid();\n"
        )
        return int(node.psql(count_sql).strip())

    def _drain(self) -> None:
        """Wait for the last target's server connections to go, on every node."""
        for node in (self.pg, self.replica):
            if node is None:
                continue
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while True:
                left = self._client_backends(node)
                if left == 0:
                    break
                if time.monotonic() > deadline:
                    role = "primary" if node is self.pg else "replica"
                    note = (
                        f"{left} PostgreSQL client backends still open on the {role} "
                        f"after {DRAIN_TIMEOUT:g}s"
                    )
                    log(note)
                    self.notes.append(note)
                    break
                time.sleep(0.05)

    def _prepare_database(self) -> None:
        """Let the last target's connections go; vacuum as pgbench would; let the replica
        replay that, so every run starts from the same data on both nodes."""
        assert self.pg is not None
        self._drain()
        self.pg.psql(
            "VACUUM pgbench_branches;\nVACUUM pgbench_tellers;\n"
            "TRUNCATE pgbench_history;\nCHECKPOINT;\n",
            dbname="bench",
        )
        if self.replica is not None:
            wait_replayed(self.pg, self.replica)

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

    def _start(
        self, launcher: Launcher, target: str, idle_clients: bool = False, routed: bool = False
    ) -> Running:
        running = launcher.start(target, idle_clients=idle_clients, routed=routed)
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
        if self.replica is not None:
            try:
                self.replica.stop()
            except Exception as e:
                log(f"could not stop the replica: {e}")
            self.replica = None
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
            "pool sizing": pool_sizing(self.max_clients),
            "method": (
                "a fresh target process per run; TPS as pgbench reports it (without initial "
                "connection time, except -C); CPU = run time of the target's process tree "
                "(PostgreSQL's for direct: every thread's schedstat, plus reaped children's "
                "cutime+cstime) over the run / transactions processed; pgbouncer-session "
                "and pgpool-tw, and pgbouncer-transaction and pgpool-tw-transaction, run "
                "twice per workload, each pair back to back in ABBA order, and their row "
                "is the mean TPS and latency of the two runs, with transactions, failures "
                "and CPU summed"
            ),
            "wall_time_s": round(time.monotonic() - self.started, 1),
        }
        if self.routed:
            meta["routed workloads"] = (
                "node 0 = the PostgreSQL above (primary), node 1 = its streaming replica "
                "(pg_basebackup -R, hot standby, same settings, on the same 2 cores); "
                "routed targets share these pgpool.conf lines: "
                + ", ".join(f"{k}={v}" for k, v in self._routing_lines().items())
                + f"; {SINGLE} is pgpool-tw with node 0 alone; each of a routed workload's "
                "targets runs twice, in a palindrome order (ABBA), and its row is the mean "
                "of the two; commits per node = pg_stat_database xact_commit, all databases, "
                "from before the warm-up to after the pooler stopped"
            )
        if self.notes:
            meta["notes"] = "; ".join(self.notes)
        return meta

    def _routing_lines(self) -> dict[str, object]:
        assert self.pg is not None
        launcher = Launcher(self.pg, self.root, self.max_clients, self.replica)
        lines = launcher.routing_settings()
        return {
            k: v for k, v in lines.items() if not k.startswith(("backend_hostname", "backend_port"))
        }

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
