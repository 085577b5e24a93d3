"""The pgbench workloads, one pgbench run, and what its output says.

Owns: the pgbench arguments of S1..S7 (one PostgreSQL; S7 is S1 with every client pinned
to its server by a session setting, for transaction pooling's cost of a pin, issue #18)
and R1..R3 (routed: a primary and its streaming replica behind the pooler), the pgbench
scripts of ``bench/`` they name, the warm-up before a timed run, running pgbench
with a hard wall-clock timeout, parsing its summary (TPS, average latency, failed and
processed transactions), and combining one target's runs of a workload into one result.

Must never: raise on a pgbench failure (a failed run is a result), or judge speed.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

from procs import client_env, pg_bin

_N = TypeVar("_N", int, float)

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_MARGIN = 60.0  # seconds past --duration before a pgbench run counts as hung
WARM_UP_TIMEOUT = 120.0  # seconds before a warm-up counts as hung


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    args: tuple[str, ...]
    clients: int
    #: Run through a pooler with two backends, a primary and its streaming replica, so
    #: that reads are load balanced (issue #16); only poolers that route run it.
    routed: bool = False
    #: Also run single-backend pgpool-tw, the yardstick for what routing costs it.
    single_too: bool = False
    #: A pgbench script file in bench/ (``-f``), when the built-in ones do not serve.
    script: str = ""
    #: Run only when named in --workloads.
    named_only: bool = False


WORKLOADS = {
    w.name: w
    for w in (
        Workload("S1", "select-only, simple protocol, 16 clients", ("-S", "-M", "simple"), 16),
        # S1 with each client pinned to its server for good: its first transaction runs
        # `SET statement_timeout` outside a transaction block, which a transaction pooler
        # that keeps sessions whole must pin for (a setting it does not replay), then its
        # own `SELECT count(*) FROM pgbench_branches \gset` for S1's range of accounts
        # (a custom script's :scale is not the table's); every later transaction is
        # S1's, statement for statement.  With pgpool-tw-transaction, S7 ÷ S1 is what a
        # pin costs; PgBouncer pins nothing (the SET just stays on some server), so its
        # S7 ÷ S1 is the yardstick for the script and the minutes between the two.  Next
        # to S1 here, so that --workloads runs the two back to back.
        Workload(
            "S7",
            "select-only, simple protocol, 16 clients, each pinned by a SET",
            ("-M", "simple", "-D", "nbranches=0"),
            16,
            script="pinned-select.sql",
            named_only=True,
        ),
        Workload("S2", "select-only, prepared, 16 clients", ("-S", "-M", "prepared"), 16),
        Workload("S3", "TPC-B-like read/write, 16 clients", (), 16),
        Workload("S4", "select-only, connect per transaction, 16 clients", ("-S", "-C"), 16),
        Workload("S5", "select-only, 500 clients", ("-S",), 500),
        Workload("S6", "select-only, 1 client", ("-S",), 1),
        # S1's, S3's and S2's shapes, through a primary and a streaming replica.
        Workload(
            "R1",
            "select-only, simple protocol, 16 clients, primary + replica",
            ("-S", "-M", "simple"),
            16,
            routed=True,
            single_too=True,
        ),
        Workload("R2", "TPC-B-like read/write, 16 clients, primary + replica", (), 16, True),
        Workload(
            "R3",
            "select-only, prepared, 16 clients, primary + replica",
            ("-S", "-M", "prepared"),
            16,
            routed=True,
            single_too=True,
        ),
    )
}
#: What runs when --workloads is not given: the one-PostgreSQL workloads but S7.  The
#: routed ones add a replica and about three minutes, so they run when named; S7 measures
#: transaction mode only.
DEFAULT_WORKLOADS = tuple(name for name, w in WORKLOADS.items() if not (w.routed or w.named_only))


def pgbench_args(workload: Workload, script_dir: str = HERE) -> list[str]:
    """pgbench's arguments for ``workload``, its script (if any) found in ``script_dir``."""
    args = list(workload.args)
    if workload.script:
        args += ["-f", os.path.join(script_dir, workload.script)]
    args += ["-c", str(workload.clients)]
    if workload.clients > 1:
        args += ["-j", "2"]
    return args


@dataclass
class RunResult:
    """One (workload, target) pgbench run."""

    workload: str
    target: str
    tps: Optional[float] = None
    latency_ms: Optional[float] = None
    failed: Optional[int] = None  # pgbench's "number of failed transactions"
    processed: Optional[int] = None  # "number of transactions actually processed"
    exit_status: Optional[int] = None  # None: killed after the hard timeout
    timed_out: bool = False
    error: str = ""  # first error line pgbench printed, or why it did not run
    cpu_us: Optional[float] = None  # CPU of the measured process tree during the run
    cpu_of: str = ""  # "pooler" or "PostgreSQL"
    servers: Optional[int] = None  # server connections a pooler held when timing began
    #: Routed runs: the replica's server connections when timing began.
    replica_servers: Optional[int] = None
    #: Routed runs: transactions each node committed (pg_stat_database xact_commit, all
    #: databases) from before the warm-up to after the pooler stopped, primary first.
    node_commits: Optional[list[int]] = None
    #: Transactions pgbench processed in the untimed warm-up before the run (its rounds too).
    warmup_processed: Optional[int] = None
    wall_s: float = 0.0
    argv: list[str] = field(default_factory=list)
    samples: list[RunResult] = field(default_factory=list)  # the runs ``combine`` merged

    @property
    def ok(self) -> bool:
        return (
            self.exit_status == 0
            and not self.timed_out
            and self.failed == 0
            and (self.processed or 0) > 0
        )

    @property
    def cpu_us_per_tx(self) -> Optional[float]:
        if self.cpu_us is None or not self.processed:
            return None
        return self.cpu_us / self.processed


def _all(values: list[Optional[_N]]) -> Optional[list[_N]]:
    """Every value, or None when one is missing."""
    present = [v for v in values if v is not None]
    return present if len(present) == len(values) else None


def combine(runs: list[RunResult]) -> RunResult:
    """One target's runs of one workload as one result, the runs kept as ``samples``.

    The runs are equally long, so the mean of their TPS is their transactions over
    their time.  A figure one run lacks is lacking in the whole, and one failed,
    hung or killed run makes the whole fail.
    """
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    merged = RunResult(first.workload, first.target, argv=first.argv, samples=list(runs))
    tps = _all([run.tps for run in runs])
    latency = _all([run.latency_ms for run in runs])
    failed = _all([run.failed for run in runs])
    processed = _all([run.processed for run in runs])
    cpu = _all([run.cpu_us for run in runs])
    merged.tps = None if tps is None else sum(tps) / len(tps)
    merged.latency_ms = None if latency is None else sum(latency) / len(latency)
    merged.failed = None if failed is None else sum(failed)
    merged.processed = None if processed is None else sum(processed)
    merged.cpu_us = None if cpu is None else sum(cpu)
    merged.cpu_of = first.cpu_of
    statuses = [run.exit_status for run in runs]
    merged.exit_status = None if None in statuses else next((s for s in statuses if s), 0)
    merged.timed_out = any(run.timed_out for run in runs)
    merged.error = "; ".join(dict.fromkeys(run.error for run in runs if run.error))
    servers = [run.servers for run in runs if run.servers is not None]
    merged.servers = min(servers) if servers else None
    replica = [run.replica_servers for run in runs if run.replica_servers is not None]
    merged.replica_servers = min(replica) if replica else None
    warmed = _all([run.warmup_processed for run in runs])
    merged.warmup_processed = None if warmed is None else sum(warmed)
    commits = [run.node_commits for run in runs if run.node_commits is not None]
    if len(commits) == len(runs):
        merged.node_commits = [sum(column) for column in zip(*commits)]
    merged.wall_s = sum(run.wall_s for run in runs)
    return merged


_TPS = re.compile(r"^tps = (\d+(?:\.\d+)?)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = (\d+(?:\.\d+)?) ms", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_ERROR = re.compile(r"^(?:pgbench: )?(?:error|fatal): .*$", re.MULTILINE)


def _first(pattern: re.Pattern[str], text: str) -> Optional[str]:
    match = pattern.search(text)
    return match.group(1) if match else None


def parse_output(result: RunResult, stdout: str, stderr: str) -> None:
    """Fill ``result`` from pgbench's summary; missing lines stay None."""
    tps = _first(_TPS, stdout)
    latency = _first(_LATENCY, stdout)
    failed = _first(_FAILED, stdout)
    processed = _first(_PROCESSED, stdout)
    result.tps = None if tps is None else float(tps)
    result.latency_ms = None if latency is None else float(latency)
    result.failed = None if failed is None else int(failed)
    result.processed = None if processed is None else int(processed)
    errors = _ERROR.findall(stderr)
    if errors and not result.error:
        more = f" (and {len(errors) - 1} more error lines)" if len(errors) > 1 else ""
        result.error = errors[0].strip()[:300] + more


def _pgbench(
    argv: list[str],
    timeout: float,
    on_start: Callable[[Optional[subprocess.Popen[str]]], None],
) -> tuple[str, str, Optional[int]]:
    """Run pgbench: (stdout, stderr, exit status), the status None when it hung and was killed."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=client_env(),
        start_new_session=True,
    )
    on_start(proc)
    status: Optional[int]
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        status = None
    except BaseException:  # a signal stops the benchmark: pgbench goes first
        proc.kill()
        proc.wait()
        raise
    finally:
        on_start(None)
    return stdout, stderr, status


def _failure(result: RunResult, stderr: str, status: Optional[int], timeout: float) -> str:
    """Why a pgbench run failed: hung, or pgbench's first error line, or its last line."""
    if status is None:
        return f"hung: killed after {timeout:g}s"
    return result.error or (stderr.strip().splitlines() or [f"exit status {status}"])[-1]


def _argv(workload: Workload, port: int, length: list[str]) -> list[str]:
    argv = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-n"]
    return argv + length + pgbench_args(workload) + ["bench"]


def warm_up(
    workload: Workload,
    target: str,
    port: int,
    length: list[str],
    on_start: Callable[[Optional[subprocess.Popen[str]]], None],
) -> RunResult:
    """One untimed pgbench run of the workload (``length``: -t N or -T S).

    Its result is ``ok`` with the transactions it processed, or the failure (with no TPS
    or latency: an untimed run's figures are no result).
    """
    argv = _argv(workload, port, length)
    result = RunResult(workload.name, target, argv=argv)
    started = time.monotonic()
    stdout, stderr, status = _pgbench(argv, WARM_UP_TIMEOUT, on_start)
    result.wall_s = time.monotonic() - started
    result.exit_status = status
    parse_output(result, stdout, stderr)
    result.tps = result.latency_ms = None
    if result.ok:
        return result
    result.timed_out = status is None
    reason = _failure(result, stderr, status, WARM_UP_TIMEOUT)
    result.error = f"warm-up ({' '.join(length)}) failed: {reason}"
    return result


def run_pgbench(
    workload: Workload,
    target: str,
    port: int,
    duration: int,
    on_start: Callable[[Optional[subprocess.Popen[str]]], None],
) -> RunResult:
    """One pgbench run against 127.0.0.1:port; a hang past duration + 60 s is killed.

    ``on_start`` is told the process (and None once it is gone), so that a signal
    handler elsewhere can kill it.  Vacuuming is done beforehand by the caller (-n).
    """
    argv = _argv(workload, port, ["-T", str(duration)])
    result = RunResult(workload.name, target, argv=argv)
    started = time.monotonic()
    stdout, stderr, status = _pgbench(argv, duration + TIMEOUT_MARGIN, on_start)
    result.wall_s = time.monotonic() - started
    result.exit_status = status
    result.timed_out = status is None
    parse_output(result, stdout, stderr)
    if status != 0:
        result.error = _failure(result, stderr, status, duration + TIMEOUT_MARGIN)
    return result
