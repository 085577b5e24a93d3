"""``scripts/faults``: what a failed server costs the clients of pgpool-tw (issue 17).

For each fault (``stop``: pg_ctl stop -m fast; ``kill``: kill -9 of every process of the
server; ``pause``: SIGSTOP of every process of the server, SIGCONT ``--pause`` seconds
later; ``restart``: pg_ctl stop -m fast and start again at once) and each target (the
primary, the streaming standby), a fresh primary and standby (``pg_basebackup -R``,
application_name ``replica1``) get a real ``twistd -n pgpool`` in front with a health
check every second, a failover command that promotes the standby as pgpool-II's
failover.sh does, and a load: two pgbench runs (``-S`` with 4 clients, TPC-B-like with 2)
and a few probe clients that each read and write every 20 ms, reconnecting after an
error.  A pgbench client that errs is aborted for the rest of its run, so the probes are
what tells when service is clean again.

Per fault it reports the seconds from the fault to clean service (the end of the last
probe operation that failed or took longer than ``SLOW``, counted once the probes have
then read and written without a failure for ``CLEAN_WINDOW``), the longest time one probe
went without a successful read and write, the client errors (failed probe operations,
pgbench's aborted clients and failed transactions), whether the pooler detached the node,
and whether the standby was promoted (it left recovery).

Owns: the scenario (servers, pooler, load, fault, measurement, teardown) and its table.

Must never: signal a process it did not start (the pooler and pgbench by their Popen
objects) or that is not a server process of a TempPostgres it started (devdb's halt,
crash, freeze and stop, and the postmaster's own children found by their parent pid),
leave a server frozen or a process running after a scenario, or talk to anything but
loopback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Callable, Optional

from pgpool_tw_dev.devdb import (
    TempPostgres,
)
from pgpool_tw_dev.faultload import (
    STANDBY_NAME,
    LogWatch,
    Op,
    Pgbench,
    Pooler,
    Probe,
    clean_service_after,
    outage,
    read_text,
)
from pgpool_tw_dev.replica import start_replica, wait_replayed

__all__ = [
    "FAULTS",
    "TARGETS",
    "FaultResult",
    "Op",
    "Options",
    "Scenario",
    "clean_service_after",
    "format_table",
    "main",
    "outage",
    "run_scenario",
]

FAULTS = ("stop", "kill", "pause", "restart")
TARGETS = ("primary", "standby")

_SOCKET_DIR_MAX = 80  # sun_path is 108 bytes: leave room for "/.s.PGSQL.65535"


# -- a scenario ---------------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    """What a run does (the command line's options)."""

    faults: tuple[str, ...] = FAULTS
    targets: tuple[str, ...] = TARGETS
    seconds: int = 5  # load before the fault
    observe: int = 15  # pgbench's run after the fault
    wait: float = 60.0  # the most we wait for clean service after the fault
    pause: float = 5.0  # how long ``pause`` keeps the server stopped
    probes: int = 4
    rate: int = 300  # pgbench -R for each of the two runs (0: as fast as it can)
    children: int = 64  # num_init_children
    keep: bool = False  # keep each scenario's pooler dir (conf, log, pgbench output)
    #: pgpool-tw's read_your_writes.  Off by default here: a probe writes every 20 ms, and
    #: with it on the probe's reads would wait for the standby's replay and mostly go to
    #: the primary, so a standby's fault would hardly reach them (pgpool-II's behaviour).
    read_your_writes: bool = False


@dataclasses.dataclass
class FaultResult:
    """One scenario's figures; times are seconds after the fault."""

    fault: str
    target: str
    #: clean_service_after's answer at the end (None: service did not come back).
    clean_after: Optional[float] = None
    #: When the last failed probe operation ended (None: none failed after the fault).
    last_error_after: Optional[float] = None
    #: The slowest probe operation that ended after the fault (or was still running).
    longest_stall: float = 0.0
    #: The longest any one probe went without a successful read, and write (``outage``).
    read_outage: float = 0.0
    write_outage: float = 0.0
    #: probe_errors + pgbench_aborted + pgbench_failed.
    errors: int = 0
    probe_errors: int = 0
    probe_ops: int = 0
    #: pgbench clients that an error aborted (pgbench never reconnects them).
    pgbench_aborted: int = 0
    pgbench_failed: int = 0
    #: pgbench runs still running when the scenario ended (so killed): a client of theirs
    #: waited for an answer that never came (pgbench checks -T only between transactions).
    pgbench_hung: list[str] = dataclasses.field(default_factory=list)
    #: Whether the pooler detached the target node, and when (its log's line).
    detached: bool = False
    detached_after: Optional[float] = None
    other_detached: list[int] = dataclasses.field(default_factory=list)
    #: Whether the standby left recovery (the failover command promoted it).
    promoted: bool = False
    #: When the pooler found node 1 to be the primary.
    primary_found_after: Optional[float] = None
    #: SHOW pool_nodes through the pooler at the end.
    pool_nodes: list[dict[str, str]] = dataclasses.field(default_factory=list)
    #: The probes' most frequent error messages, with their counts.
    error_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Pooler log lines that look like a bug (a traceback, an error or critical line).
    pooler_problems: list[str] = dataclasses.field(default_factory=list)
    #: failover_command's arguments, one line per run.
    failover_calls: list[str] = dataclasses.field(default_factory=list)
    note: str = ""
    #: The scenario's pooler dir, when kept (--keep).
    directory: Optional[str] = None


def _work_dir() -> str:
    path = tempfile.mkdtemp(prefix="pgtw-faults-")
    if len(path) > _SOCKET_DIR_MAX:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="pgtw-faults-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


def _inject(fault: str, victim: TempPostgres) -> None:
    if fault == "stop":
        victim.halt("fast")
    elif fault == "kill":
        victim.crash()
    elif fault == "pause":
        victim.freeze(True)
    elif fault == "restart":
        victim.halt("fast")
        victim.restart()
    else:
        raise ValueError(f"unknown fault {fault!r}")


def _in_recovery(pg: Optional[TempPostgres]) -> Optional[bool]:
    """Whether a running server is a standby (None: not running or not answering)."""
    if pg is None or pg.pid is None:
        return None
    try:
        return pg.psql("SELECT pg_is_in_recovery();").strip() == "t"
    except RuntimeError:
        return None


class Scenario:
    """One fault on one target: fresh servers and pooler, the load, the fault, the wait
    for clean service, the figures, and a teardown that leaves nothing running."""

    def __init__(self, fault: str, target: str, options: Options) -> None:
        self.fault = fault
        self.target = target
        self.options = options
        self.node = 0 if target == "primary" else 1
        self.result = FaultResult(fault, target)
        self.notes: list[str] = []
        self.directory = _work_dir()
        self.primary: Optional[TempPostgres] = None
        self.standby: Optional[TempPostgres] = None
        self.pooler: Optional[Pooler] = None
        self.watch: Optional[LogWatch] = None
        self.benches: list[Pgbench] = []
        self.probes: list[Probe] = []
        self.stop = threading.Event()
        self.frozen: Optional[TempPostgres] = None

    def run(self, say: Callable[[str], None]) -> FaultResult:
        try:
            pooler = self.set_up()
            self.start_load(pooler)
            say(f"{self.fault} {self.target}: load for {self.options.seconds}s")
            time.sleep(self.options.seconds)
            before = sum(1 for p in self.probes for op in p.ops if op.error is not None)
            if before:
                self.notes.append(f"{before} probe errors before the fault")
            say(f"{self.fault} {self.target}: injecting")
            injected = self.inject()
            self.wait(pooler, injected)
            self.measure(pooler, injected)
        except Exception as e:
            text = str(e).strip()
            self.notes.append(
                f"scenario failed: {text.splitlines()[0] if text else type(e).__name__}"
            )
        finally:
            self.tear_down()
        self.result.note = "; ".join(self.facts() + self.notes)
        return self.result

    def set_up(self) -> Pooler:
        self.primary = TempPostgres().start()
        self.standby = start_replica(self.primary, application_name=STANDBY_NAME)
        options = self.options
        self.pooler = pooler = Pooler(
            self.directory,
            self.primary,
            self.standby,
            options.children,
            options.read_your_writes,
        ).start()
        pooler.pgbench_init()
        made = pooler.psql(
            "CREATE TABLE faults_probe (id bigserial PRIMARY KEY, probe int, "
            "at timestamptz DEFAULT now())"
        )
        if made.returncode != 0:
            raise RuntimeError(f"CREATE TABLE through the pooler failed: {made.stderr.strip()}")
        wait_replayed(self.primary, self.standby)
        self.watch = LogWatch(pooler.log_path)
        self.watch.poll()
        return pooler

    def start_load(self, pooler: Pooler) -> None:
        options = self.options
        seconds = options.seconds + options.observe
        rate = ["-R", str(options.rate)] if options.rate > 0 else []
        port, directory = pooler.port, self.directory
        self.benches = [
            Pgbench("faults_select", ["-S", "-c", "4", *rate], port, directory, seconds),
            Pgbench("faults_tpcb", ["-c", "2", *rate], port, directory, seconds),
        ]
        self.probes = [
            Probe(n, pooler.dsn(f"faults_probe{n}"), self.stop).start()
            for n in range(options.probes)
        ]

    @property
    def victim(self) -> TempPostgres:
        pg = self.primary if self.target == "primary" else self.standby
        assert pg is not None
        return pg

    def inject(self) -> float:
        """The fault; returns when it began (monotonic)."""
        injected = time.monotonic()
        if self.fault == "pause":
            self.frozen = self.victim
        try:
            _inject(self.fault, self.victim)
        except RuntimeError as e:  # a restart that failed
            self.notes.append(f"fault: {str(e).splitlines()[0]}")
        return injected

    def _in_flight(self) -> list[float]:
        return [p.in_flight for p in self.probes if p.in_flight is not None]

    def _ops(self) -> list[Op]:
        return [op for p in self.probes for op in p.ops]

    def wait(self, pooler: Pooler, injected: float) -> None:
        """Until service is clean, pgbench has ended and a stopped or killed node has
        been failed over (detached; a primary's standby found primary), or --wait."""
        assert self.watch is not None
        watch, options = self.watch, self.options
        thaw_at = injected + options.pause
        deadline = injected + options.wait
        expect_failover = self.fault in ("stop", "kill")
        while True:
            now = time.monotonic()
            watch.poll()
            if self.frozen is not None and now >= thaw_at:
                self.frozen.freeze(False)
                self.frozen = None
            clean = clean_service_after(self._ops(), injected, now, self._in_flight())
            failed_over = self.node in watch.detached
            if self.node == 0:
                failed_over = failed_over and 1 in watch.primary_found
            expected = failed_over or not expect_failover
            benches_done = all(b.done() for b in self.benches)
            if self.frozen is None and clean is not None and expected and benches_done:
                return
            if now >= deadline:
                if clean is None:
                    self.notes.append(f"no clean service within {options.wait:g}s")
                if not expected:
                    self.notes.append("the node was not failed over")
                return
            if not pooler.alive():
                code = pooler.proc.returncode if pooler.proc is not None else None
                self.notes.append(f"the pooler exited ({code})")
                return
            time.sleep(0.1)

    def measure(self, pooler: Pooler, injected: float) -> None:
        assert self.watch is not None
        result, watch = self.result, self.watch
        self.stop.set()  # what the probes do from now on is teardown, not counted
        ended = time.monotonic()
        ops, in_flight = self._ops(), self._in_flight()
        result.clean_after = clean_service_after(ops, injected, ended, in_flight)
        errors = [op for op in ops if op.error is not None]
        late = [op.end for op in errors if op.end > injected]
        result.last_error_after = max(late) - injected if late else None
        durations = [op.end - op.start for op in ops if op.end > injected]
        result.longest_stall = max(durations + [ended - s for s in in_flight], default=0.0)
        result.read_outage = max(outage(p.ops, "read", injected, ended) for p in self.probes)
        result.write_outage = max(outage(p.ops, "write", injected, ended) for p in self.probes)
        result.probe_errors = len(errors)
        result.probe_ops = len(ops)
        result.error_kinds = dict(Counter(op.error or "" for op in errors).most_common(5))
        for bench in self.benches:
            bench.stop()
            result.pgbench_aborted += bench.aborted()
            failed = bench.failed()
            if bench.killed:
                result.pgbench_hung.append(bench.name)
                self.notes.append(f"{bench.name} hung (a client got no answer): killed")
            elif failed is None:
                self.notes.append(f"{bench.name}: no pgbench summary")
            result.pgbench_failed += failed or 0
        result.errors = result.probe_errors + result.pgbench_aborted + result.pgbench_failed
        watch.poll()
        if self.node in watch.detached:
            result.detached = True
            result.detached_after = watch.detached[self.node] - injected
        result.other_detached = sorted(n for n in watch.detached if n != self.node)
        if 1 in watch.primary_found:
            result.primary_found_after = watch.primary_found[1] - injected
        result.promoted = _in_recovery(self.standby) is False
        result.pool_nodes = pooler.pool_nodes()
        result.pooler_problems = list(watch.problems)
        if watch.problems:
            self.notes.append("pooler log: " + watch.problems[0][:120])

    def tear_down(self) -> None:
        """Everything stopped, each by its own handle, whatever happened before."""
        self.stop.set()
        if self.frozen is not None:
            self.frozen.freeze(False)
            self.frozen = None
        for bench in self.benches:
            bench.stop()
        for probe in self.probes:
            probe.thread.join(2.0)
        if self.pooler is not None:
            self.pooler.stop()  # a probe stuck on a hung server gets its FATAL now
            self.result.failover_calls = read_text(self.pooler.record_path).splitlines()
        for probe in self.probes:
            probe.thread.join(5.0)
        for pg in (self.standby, self.primary):
            if pg is not None:
                pg.stop()
        if self.options.keep:
            self.result.directory = self.directory
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def facts(self) -> list[str]:
        result, facts = self.result, []
        if result.detached_after is not None:
            facts.append(f"node {self.node} detached at {result.detached_after:.1f}s")
        if result.other_detached:
            facts.append(f"also detached: node {', '.join(map(str, result.other_detached))}")
        if result.primary_found_after is not None:
            facts.append(f"pooler found node 1 primary at {result.primary_found_after:.1f}s")
        return facts


def run_scenario(
    fault: str, target: str, options: Options, say: Callable[[str], None] = lambda _: None
) -> FaultResult:
    """One fault on one target under load, from fresh servers to a clean teardown."""
    return Scenario(fault, target, options).run(say)


# -- output -------------------------------------------------------------------------------


def _seconds(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:.1f}"


def format_table(results: Sequence[FaultResult]) -> str:
    """The results as a Markdown table (what bench/RESULTS.md holds)."""
    rows = [
        "| fault | target | clean service after (s) | reads / writes out (s) | client errors "
        "(probe / pgbench aborted / pgbench failed) | detached | promoted | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        errors = f"{r.errors} ({r.probe_errors} / {r.pgbench_aborted} / {r.pgbench_failed})"
        out = f"{r.read_outage:.1f} / {r.write_outage:.1f}"
        rows.append(
            f"| {r.fault} | {r.target} | {_seconds(r.clean_after)} | {out} | {errors} | "
            f"{'yes' if r.detached else 'no'} | {'yes' if r.promoted else 'no'} | {r.note} |"
        )
    return "\n".join(rows)


def _names(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{what}: {', '.join(unknown) or 'none given'} (choose from {', '.join(allowed)})"
        )
    return names


def parse_args(argv: Optional[Sequence[str]]) -> tuple[Options, bool, bool]:
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="scripts/faults",
        description="Stop, kill -9, pause (SIGSTOP) and restart the primary and the standby "
        "behind pgpool-tw under pgbench load; print, per fault, the seconds until clean "
        "service and the client errors.",
    )
    parser.add_argument(
        "--faults",
        type=lambda s: _names(s, FAULTS, "unknown fault"),
        default=FAULTS,
        help=f"comma-separated, of {','.join(FAULTS)} (default: all)",
    )
    parser.add_argument(
        "--targets",
        type=lambda s: _names(s, TARGETS, "unknown target"),
        default=TARGETS,
        help=f"comma-separated, of {','.join(TARGETS)} (default: both)",
    )
    parser.add_argument(
        "--seconds", type=int, default=defaults.seconds, help="load before the fault (s)"
    )
    parser.add_argument(
        "--observe", type=int, default=defaults.observe, help="pgbench's run after the fault (s)"
    )
    parser.add_argument(
        "--wait", type=float, default=defaults.wait, help="the most to wait for clean service (s)"
    )
    parser.add_argument(
        "--pause", type=float, default=defaults.pause, help="how long a paused server stays stopped"
    )
    parser.add_argument("--probes", type=int, default=defaults.probes, help="probe clients")
    parser.add_argument(
        "--rate", type=int, default=defaults.rate, help="pgbench -R of each pgbench (0: none)"
    )
    parser.add_argument(
        "--read-your-writes",
        action="store_true",
        help="leave pgpool-tw's read_your_writes on (the probes then read mostly on the primary)",
    )
    parser.add_argument("--keep", action="store_true", help="keep each scenario's pooler dir")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    for name in ("seconds", "observe", "probes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    options = Options(
        faults=args.faults,
        targets=args.targets,
        seconds=args.seconds,
        observe=args.observe,
        wait=args.wait,
        pause=args.pause,
        probes=args.probes,
        rate=args.rate,
        keep=args.keep,
        read_your_writes=args.read_your_writes,
    )
    return options, args.json, args.quiet


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every fault on every target; 0 when service came back after each and no
    pgbench client was left without an answer, else 1."""
    options, as_json, quiet = parse_args(argv)
    try:
        import psycopg  # noqa: F401  (the probes' client)
    except ImportError:
        print(
            "faults: psycopg is not installed (pip install 'psycopg[binary]'; "
            "scripts/faults installs the [test] extra that has it)",
            file=sys.stderr,
        )
        return 2

    def say(text: str) -> None:
        if not quiet:
            print(f"==> {text}", file=sys.stderr, flush=True)

    results = []
    for fault in options.faults:
        for target in options.targets:
            result = run_scenario(fault, target, options, say)
            say(
                f"{fault} {target}: clean after {_seconds(result.clean_after)}s, "
                f"{result.errors} errors; {result.note}"
            )
            results.append(result)
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    else:
        print(format_table(results))
    return 0 if all(r.clean_after is not None and not r.pgbench_hung for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
