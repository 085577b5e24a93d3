"""The soak's phases, its report and its exit status.

1. A throwaway primary, the soak's table, ``twistd pgpool`` in front (``stage.py``).
2. Warm-up: the load with no fault, then the clients leave and the pooler settles; its
   fds and RSS then are the start (a pooler that has served clients once: its caches
   and allocator arenas are filled, as they are at the end).
3. The soak: the load and the faults for ``--minutes`` (and on until every kind of
   fault has run once); the clients leave, the pooler settles, fds and RSS are the end.
4. The rows, read from the server directly, against what the clients saw acknowledged.

Exit status 0 when every acknowledged row is there and nothing else is but rows in
doubt, the fds and RSS are within 10 % of the start, every fault was followed by clean
service, no client was stuck and the pooler stayed up; 1 otherwise; 2 when it could not
run.

Must never: leave a process or a temp dir behind (``--keep`` keeps the dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Callable, Optional

from pgpool_tw_dev.soak.clients import (
    BENCH_CLIENTS,
    BENCH_RATE,
    BENCH_ROUND,
    BenchRounds,
    Churn,
    Copier,
    Worker,
    Writer,
    client_errors,
    stop_workers,
)
from pgpool_tw_dev.soak.faults import DESCRIPTIONS, KINDS, FaultRecord, Scheduler
from pgpool_tw_dev.soak.ledger import Ledger, Verdict, verify
from pgpool_tw_dev.soak.stage import DATABASE, SoakPooler, Usage, start_server, work_dir

LIMIT = 0.10  # fds and RSS at the end: at most 10 % above the start
WRITERS, CHURNERS, COPIERS = 3, 2, 1


@dataclasses.dataclass
class Options:
    minutes: float = 10.0
    seed: int = 1
    kinds: tuple[str, ...] = KINDS
    gap: tuple[float, float] = (4.0, 12.0)
    warmup: float = 30.0
    settle: float = 8.0
    children: int = 16
    auth_timeout: int = 5
    flood_size: int = 300
    recover_limit: float = 60.0
    keep: bool = False


@dataclasses.dataclass
class Outcome:
    options: Options
    started_at: str = ""
    server_version: str = ""
    launch: Optional[Usage] = None
    start: Optional[Usage] = None
    end: Optional[Usage] = None
    verdict: Optional[Verdict] = None
    faults: list[FaultRecord] = dataclasses.field(default_factory=list)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    stuck: list[str] = dataclasses.field(default_factory=list)
    bench_notes: list[str] = dataclasses.field(default_factory=list)
    pooler_problems: list[str] = dataclasses.field(default_factory=list)
    pooler_died: str = ""
    soak_seconds: float = 0.0
    directory: str = ""

    def failures(self) -> list[str]:
        out = []
        verdict = self.verdict
        if verdict is None:
            out.append("the rows were not counted")
        else:
            if verdict.missing:
                out.append(f"{len(verdict.missing)} acknowledged rows missing")
            if verdict.unexpected:
                out.append(f"{len(verdict.unexpected)} rows never acknowledged nor in doubt")
            out += verdict.bench_wrong
        if self.start is not None and self.end is not None:
            if self.end.fds > self.start.fds * (1 + LIMIT):
                out.append(f"fds {self.start.fds} -> {self.end.fds}")
            if self.end.rss_kb > self.start.rss_kb * (1 + LIMIT):
                out.append(f"RSS {self.start.rss_kb} -> {self.end.rss_kb} kB")
        else:
            out.append("the pooler's fds and RSS were not measured")
        out += [
            f"fault {f.number} ({f.kind}) never recovered"
            for f in self.faults
            if f.clean_after is None
        ]
        if self.stuck:
            out.append(f"clients stuck: {', '.join(self.stuck)}")
        if self.pooler_died:
            out.append(self.pooler_died)
        return out


def _settle(pooler: SoakPooler, seconds: float) -> Usage:
    time.sleep(seconds)
    return pooler.usage()


def _load(pooler: SoakPooler, ledger: Ledger, bench: BenchRounds, until: float) -> list[Worker]:
    workers: list[Worker] = []
    for n in range(WRITERS):
        workers.append(Writer(n, pooler, ledger).start())
    for n in range(CHURNERS):
        workers.append(Churn(n, pooler, ledger).start())
    for n in range(COPIERS):
        workers.append(Copier(n, pooler, ledger).start())
    bench.start(until)
    return workers


def _unload(
    workers: list[Worker], bench: BenchRounds, outcome: Outcome, say: Callable[[str], None]
) -> None:
    outcome.stuck += stop_workers(workers, 30.0, say)
    if not bench.join(BENCH_ROUND + 60.0):
        outcome.stuck.append("pgbench")
    for name, count in client_errors(workers).items():
        outcome.errors[name] = outcome.errors.get(name, 0) + count


def soak(options: Options, say: Callable[[str], None]) -> Outcome:
    outcome = Outcome(options, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    directory = outcome.directory = work_dir()
    pg = pooler = None
    bench: Optional[BenchRounds] = None
    workers: list[Worker] = []
    try:
        say("starting PostgreSQL and pgpool-tw")
        pg = start_server()
        outcome.server_version = pg.psql("SHOW server_version;").strip()
        life_time = max(1, int(options.settle) - 3)  # closed before the settle ends
        pooler = SoakPooler(directory, pg, options.children, options.auth_timeout, life_time)
        pooler.start()
        outcome.launch = pooler.usage()
        ledger = Ledger()
        bench = BenchRounds(pooler, ledger, directory, first_run=1)

        say(f"warm-up: {options.warmup:g}s of load, no faults")
        workers = _load(pooler, ledger, bench, time.monotonic() + options.warmup)
        time.sleep(options.warmup)
        _unload(workers, bench, outcome, say)
        outcome.start = _settle(pooler, options.settle)
        say(f"start: {outcome.start}")

        say(f"soak: {options.minutes:g} min of load and faults (seed {options.seed})")
        started = time.monotonic()
        until = started + options.minutes * 60
        workers = _load(pooler, ledger, bench, until)
        scheduler = Scheduler(
            pg,
            pooler,
            ledger,
            options.seed,
            options.kinds,
            options.gap,
            options.flood_size,
            options.recover_limit,
            started,
            say,
        )
        scheduler.run(until)
        outcome.faults = scheduler.records
        bench.until = min(bench.until, time.monotonic())
        outcome.soak_seconds = time.monotonic() - started
        if pg.pid is None:  # a fault's repair failed: the rows are still to be counted
            pg.restart()
        _unload(workers, bench, outcome, say)
        outcome.bench_notes = [f"run {r.run}: {r.note}" for r in ledger.runs if r.note]
        if pooler.alive():
            outcome.end = _settle(pooler, options.settle)
            say(f"end: {outcome.end}")
        else:
            outcome.pooler_died = f"the pooler exited ({pooler.proc and pooler.proc.returncode})"

        say("counting rows on the server")
        text = pg.psql("SELECT id FROM soak_history WHERE kind <> 'pgbench';", dbname=DATABASE)
        found = {int(line) for line in text.split()}
        text = pg.psql(
            "SELECT run, count(*) FROM soak_history WHERE kind = 'pgbench' GROUP BY run;",
            dbname=DATABASE,
        )
        bench_rows = {int(a): int(b) for a, b in (line.split("|") for line in text.split())}
        outcome.verdict = verify(ledger, found, bench_rows)
        pooler.watch.poll()
        outcome.pooler_problems = list(pooler.watch.problems)
    finally:
        for worker in workers:
            worker.stop.set()
        if bench is not None:
            bench.join(0.0)  # an interrupted run: its pgbench killed, by its Popen
        if pooler is not None:
            pooler.stop()
        if pg is not None:
            if pg.pid is not None:
                pg.freeze(False)  # a SIGSTOP left by an interrupted fault
            pg.stop()
        if not options.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return outcome


# -- the report -----------------------------------------------------------------------------


def _pct(start: int, end: int) -> str:
    return f"{(end - start) * 100 / start:+.1f} %" if start else "n/a"


def report(outcome: Outcome) -> str:
    o = outcome.options
    lines = [
        f"## pgpool-tw soak: {o.minutes:g} min, seed {o.seed}, {outcome.started_at}",
        "",
        f"PostgreSQL {outcome.server_version or '?'} (synchronous_commit on, SCRAM logins); "
        f"pgpool-tw: num_init_children = {o.children}, authentication_timeout = "
        f"{o.auth_timeout} s.  Load: {WRITERS} psycopg writers (one row per transaction), "
        f"{CHURNERS} churn clients (connect, 3 statements, disconnect), {COPIERS} COPY "
        f"client (50 rows per connection), pgbench -c {BENCH_CLIENTS} -R {BENCH_RATE} in "
        f"{BENCH_ROUND} s runs.  Faults every {o.gap[0]:g}-{o.gap[1]:g} s; floods of "
        f"{o.flood_size} sockets.  The soak ran {outcome.soak_seconds:.0f} s.",
        "",
        "### Commits",
        "",
    ]
    v = outcome.verdict
    if v is None:
        lines.append("not counted (the run failed before the end)")
    else:
        lines += [
            "| | commits | rows |",
            "|---|---:|---:|",
            f"| acknowledged | {v.acked_commits} | {v.acked_rows} |",
            f"| in doubt (acknowledgement lost to a fault) | {v.doubtful_commits} | "
            f"{v.doubtful_rows} |",
            f"| rows found | | {v.rows_found} |",
            f"| of which in doubt, found committed | | {v.doubt_committed} |",
            f"| acknowledged, not found | | {len(v.missing)} |",
            f"| found, never acknowledged nor in doubt | | {len(v.unexpected)} |",
            f"| of which from transactions killed before COMMIT | | {len(v.aborted_found)} |",
        ]
        if v.missing:
            lines.append(f"\nmissing ids (first 20): {v.missing[:20]}")
        if v.unexpected:
            lines.append(f"\nunexpected ids (first 20): {v.unexpected[:20]}")
        for text in v.bench_wrong:
            lines.append(f"\npgbench {text}")
        if v.bench_unchecked:
            lines.append(
                f"\npgbench runs killed without a summary (not checked): {v.bench_unchecked}"
            )
    lines += ["", f"### The pooler process (clients gone, {o.settle:g} s settle)", ""]
    lines += ["| | fds | RSS (kB) |", "|---|---:|---:|"]
    for name, usage in (
        ("just started", outcome.launch),
        ("start (after the warm-up)", outcome.start),
        ("end", outcome.end),
    ):
        if usage is not None:
            lines.append(f"| {name} | {usage.fds} | {usage.rss_kb} |")
    if outcome.start is not None and outcome.end is not None:
        s, e = outcome.start, outcome.end
        lines.append(f"| end vs start | {_pct(s.fds, e.fds)} | {_pct(s.rss_kb, e.rss_kb)} |")
        extra = list(e.targets)
        for target in s.targets:
            if target in extra:
                extra.remove(target)
        if extra:
            lines += ["", "fds open at the end and not at the start:", ""]
            lines += [f"    {target}" for target in extra]
    lines += ["", "### Faults", ""]
    lines += [
        "| # | at (s) | kind | detail | lasted (s) | clean service after (s) | failed probes |",
        "|---:|---:|---|---|---:|---:|---:|",
    ]
    for f in outcome.faults:
        clean = "never" if f.clean_after is None else f"{f.clean_after:.2f}"
        lines.append(
            f"| {f.number} | {f.at:.0f} | {f.kind} | {f.detail} | {f.lasted:.1f} | {clean} "
            f"| {f.probe_failures} |"
        )
    by_kind: dict[str, list[float]] = {}
    for f in outcome.faults:
        if f.clean_after is not None:
            by_kind.setdefault(f.kind, []).append(f.clean_after)
    if by_kind:
        lines += ["", "| kind | count | clean service after: median / max (s) |", "|---|---:|---|"]
        for kind in KINDS:
            times = sorted(by_kind.get(kind, []))
            total = sum(1 for f in outcome.faults if f.kind == kind)
            if total:
                median = times[len(times) // 2] if times else None
                text = f"{median:.2f} / {times[-1]:.2f}" if median is not None else "never"
                lines.append(f"| {kind} | {total} | {text} |")
    lines += ["", "### Client errors (each followed by a reconnect)", ""]
    if outcome.errors:
        lines += ["| count | first line of the error |", "|---:|---|"]
        for text, count in sorted(outcome.errors.items(), key=lambda kv: -kv[1])[:15]:
            lines.append(f"| {count} | {text.replace('|', '/')} |")
    else:
        lines.append("none")
    if outcome.bench_notes:
        lines += ["", "pgbench: " + "; ".join(outcome.bench_notes[:10])]
    if outcome.pooler_problems:
        lines += ["", "### Pooler log lines that look like a bug", "", "```"]
        lines += outcome.pooler_problems[:20] + ["```"]
    failures = outcome.failures()
    lines += ["", "### Verdict", ""]
    lines.append("PASS" if not failures else "FAIL: " + "; ".join(failures))
    if o.keep:
        lines.append(f"\n(kept: {outcome.directory})")
    return "\n".join(lines)


# -- the command line -----------------------------------------------------------------------


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}"
        )
    return kinds


def _gap(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("--gap takes MIN,MAX seconds, e.g. 4,12") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError("--gap: need 0 <= MIN <= MAX")
    return low, high


def parse_args(argv: Optional[Sequence[str]]) -> tuple[Options, bool]:
    d = Options()
    kinds_help = "; ".join(f"{k}: {DESCRIPTIONS[k]}" for k in KINDS)
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="Soak pgpool-tw under load and faults; report commits against rows, "
        "the pooler's fds and RSS, and the time to clean service after each fault. "
        f"Faults: {kinds_help}.",
    )
    parser.add_argument("--minutes", type=float, default=d.minutes, help="default 10")
    parser.add_argument("--seed", type=int, default=d.seed, help="the fault schedule's seed")
    parser.add_argument("--faults", type=_kinds, default=d.kinds, help="comma-separated kinds")
    parser.add_argument("--gap", type=_gap, default=d.gap, help="MIN,MAX s between faults")
    parser.add_argument("--warmup", type=float, default=d.warmup, help="load before the start")
    parser.add_argument("--settle", type=float, default=d.settle, help="wait before measuring")
    parser.add_argument("--children", type=int, default=d.children, help="num_init_children")
    parser.add_argument(
        "--auth-timeout", type=int, default=d.auth_timeout, help="authentication_timeout (s)"
    )
    parser.add_argument("--flood-size", type=int, default=d.flood_size, help="sockets a flood")
    parser.add_argument(
        "--recover-limit",
        type=float,
        default=d.recover_limit,
        help="how long a fault may take to clean service (s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.minutes < 0 or args.warmup < 0 or args.settle < 0:
        parser.error("--minutes, --warmup and --settle must not be negative")
    if args.auth_timeout < 1 or args.children < 1:
        parser.error("--auth-timeout and --children must be at least 1")
    options = Options(
        minutes=args.minutes,
        seed=args.seed,
        kinds=args.faults,
        gap=args.gap,
        warmup=args.warmup,
        settle=args.settle,
        children=args.children,
        auth_timeout=args.auth_timeout,
        flood_size=args.flood_size,
        recover_limit=args.recover_limit,
        keep=args.keep,
    )
    return options, args.quiet


def main(argv: Optional[Sequence[str]] = None) -> int:
    options, quiet = parse_args(argv)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        print(
            "soak: psycopg is not installed (scripts/soak installs the [test] extra)",
            file=sys.stderr,
        )
        return 2

    def say(text: str) -> None:
        if not quiet:
            print(f"==> {text}", file=sys.stderr, flush=True)

    try:
        outcome = soak(options, say)
    except (RuntimeError, OSError) as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    print(report(outcome))
    return 1 if outcome.failures() else 0
