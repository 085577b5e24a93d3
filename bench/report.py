"""The benchmark's report: Markdown tables (printed and written to a file) and JSON.

Owns: one table per workload, the final summary, the transaction-mode summary (issue
#18's ratios: pgpool-tw-transaction ÷ pgbouncer-transaction, and what a pinned session
costs: S7 ÷ S1), the routing summary (issue #16's
ratios: pgpool-tw ÷ pgpool-II routed, routed ÷ single-backend pgpool-tw, and where the
transactions went), the idle-client memory table, the header (date, nproc, versions,
settings) and the JSON form of the same results.

Must never: run anything but ``--version`` of the programs whose versions it reports.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from typing import Any, Optional

from memory import MemoryResult
from targets import PAIRS, TRANSACTION_POOL, pgbouncer_of
from workloads import WORKLOADS, RunResult, Workload, pgbench_args

#: The references of every row: PgBouncer in the row's own pool mode
#: (``targets.pgbouncer_of``: pgbouncer-transaction for pgpool-tw-transaction,
#: pgbouncer-session for the rest), and PostgreSQL itself.
REFERENCES = ("pgbouncer", "direct")
PGBOUNCER_LEGEND = (
    "÷ PgBouncer: "
    + ", ".join(f"{tw} against {bouncer}" for bouncer, tw in PAIRS if bouncer != PAIRS[0][0])
    + f", every other target against {PAIRS[0][0]}."
)
#: Issue #18's transaction-mode pair, pgpool-tw first, and its target: at least PgBouncer.
TRANSACTION_PAIR = PAIRS[1][::-1]
TARGET_VS_PGBOUNCER = 1.0
#: The pinned workload and its unpinned twin (bench/workloads.py).
PINNED, UNPINNED = "S7", "S1"
#: Routed workloads' references: pgpool-II with the same routing, and pgpool-tw alone.
ROUTED_REFERENCES = ("pgpool2", "pgpool-tw-single")
#: Issue #16's targets: routed pgpool-tw ÷ routed pgpool-II, routed ÷ single-backend -S.
TARGET_VS_PGPOOL2 = 1.5
TARGET_VS_SINGLE = 0.85


def program_version(argv: list[str]) -> str:
    """First line of ``argv``'s output (stdout or stderr), or why there is none."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not available ({type(e).__name__})"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0].strip() if lines else f"unknown (exit {proc.returncode})"


def python_versions() -> dict[str, str]:
    try:
        twisted = metadata.version("Twisted")
    except metadata.PackageNotFoundError:
        twisted = "not installed"
    from pgpool_tw.engine.speedups import speedups

    relay = (
        "C (pgpool_tw.engine._speedups)"
        if speedups is not None
        else "pure Python (C part not built)"
    )
    return {"Python": platform.python_version(), "Twisted": twisted, "pgpool-tw relay": relay}


def _num(value: Optional[float], digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(run: RunResult, reference: Optional[RunResult]) -> str:
    if reference is None or run.tps is None or not reference.tps or not reference.ok:
        return "-"
    return f"{run.tps / reference.tps:.2f}"


def _status(run: RunResult) -> str:
    if run.ok:
        return "ok"
    if run.timed_out:
        return "HUNG"
    return "FAILED"


def _cpu(run: RunResult) -> str:
    per_tx = run.cpu_us_per_tx
    if per_tx is None:
        return "-"
    text = _num(per_tx, 1)
    return f"{text} (PostgreSQL)" if run.cpu_of == "PostgreSQL" else text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in rows
    ]


def _cells(run: RunResult, first: Optional[RunResult], second: Optional[RunResult]) -> list[str]:
    """A target's row up to its CPU column, with its ratios to two references."""
    return [
        run.target,
        _status(run),
        _num(run.tps),
        " / ".join(_num(sample.tps) for sample in run.samples) or "-",
        _ratio(run, first),
        _ratio(run, second),
        _num(run.latency_ms, 3),
        _num(run.failed) if run.failed is not None else "-",
        "killed" if run.exit_status is None else str(run.exit_status),
        _num(run.processed),
        _cpu(run),
    ]


def _shown_args(workload: Workload) -> str:
    """pgbench's arguments as the report shows them: a script by its path in the repo."""
    return " ".join(pgbench_args(workload, "bench"))


def _references(
    run: RunResult, by_target: dict[str, RunResult]
) -> tuple[Optional[RunResult], Optional[RunResult]]:
    """The run's references in REFERENCES order: its mode's PgBouncer, and direct."""
    return by_target.get(pgbouncer_of(run.target)), by_target.get("direct")


def workload_table(name: str, runs: list[RunResult], targets: list[str]) -> list[str]:
    """The Markdown section of one workload: one row per target, in --targets order."""
    by_target = {run.target: run for run in runs if run.workload == name}
    workload = WORKLOADS[name]
    header = ["target", "status", "TPS", "TPS of each run", "÷ PgBouncer", "÷ direct"]
    header += ["latency ms", "failed tx", "exit", "transactions", "CPU µs/tx", "servers at start"]
    rows = []
    notes = []
    for target in targets:
        run = by_target.get(target)
        if run is None:
            continue
        rows.append(
            _cells(run, *_references(run, by_target))
            + ["-" if run.servers is None else str(run.servers)]
        )
        if run.error:
            notes.append(f"- {target}: {run.error}")
    lines = [f"### {name}: {workload.title}", "", f"`pgbench {_shown_args(workload)}`", ""]
    return lines + _table(header, rows) + ([""] + notes if notes else []) + [""]


def _servers(run: RunResult) -> str:
    if run.servers is None:
        return "-"
    if run.replica_servers is None:
        return str(run.servers)
    return f"{run.servers} + {run.replica_servers}"


def _commits(run: RunResult) -> list[str]:
    """Commits on the primary, on the replica, the replica's share, and commits per
    transaction pgbench processed (warm-up included, as the commits are)."""
    counts = run.node_commits
    if not counts or len(counts) < 2:
        return ["-", "-", "-", "-"]
    total = sum(counts)
    share = f"{100 * counts[1] / total:.0f} %" if total > 0 else "-"
    transactions = (run.processed or 0) + (run.warmup_processed or 0)
    per_tx = f"{total / transactions:.2f}" if transactions else "-"
    return [_num(counts[0]), _num(counts[1]), share, per_tx]


def routed_table(name: str, runs: list[RunResult]) -> list[str]:
    """The Markdown section of one routed workload: one row per target, in run order."""
    by_target = {run.target: run for run in runs if run.workload == name}
    refs = {ref: by_target.get(ref) for ref in ROUTED_REFERENCES}
    workload = WORKLOADS[name]
    header = ["target", "status", "TPS", "TPS of each run", "÷ pgpool2", "÷ pgpool-tw-single"]
    header += ["latency ms", "failed tx", "exit", "transactions", "CPU µs/tx"]
    header += ["servers at start (primary + replica)", "commits primary", "commits replica"]
    header += ["replica share", "commits per tx"]
    rows = []
    notes = []
    for target, run in by_target.items():
        rows.append(
            _cells(run, refs["pgpool2"], refs["pgpool-tw-single"]) + [_servers(run)] + _commits(run)
        )
        if run.error:
            notes.append(f"- {target}: {run.error}")
    args = _shown_args(workload)
    legend = (
        "Commits: pg_stat_database xact_commit summed over all databases of each node, "
        "from before the warm-up to after the pooler stopped (both runs of a target); "
        "per tx: over the transactions pgbench processed in that time, warm-up included."
    )
    lines = [f"### {name}: {workload.title}", "", f"`pgbench {args}`", "", legend, ""]
    return lines + _table(header, rows) + ([""] + notes if notes else []) + [""]


def routing_summary(runs: list[RunResult], workloads: list[str]) -> list[str]:
    """Issue #16's ratios per routed workload, with the targets they are held to."""
    by_key = {(run.workload, run.target): run for run in runs}
    header = ["workload", "pgpool-tw TPS", "pgpool2 TPS", "pgpool-tw ÷ pgpool2"]
    header += [f"≥ {TARGET_VS_PGPOOL2}?", "pgpool-tw-single TPS", "routed ÷ single"]
    header += [f"≥ {TARGET_VS_SINGLE}?", "failed tx (all rows)", "replica share tw / II"]
    rows = []
    for name in workloads:
        if not WORKLOADS[name].routed:
            continue
        tw = by_key.get((name, "pgpool-tw"))
        two = by_key.get((name, "pgpool2"))
        single = by_key.get((name, "pgpool-tw-single"))
        failed = [r.failed for r in runs if r.workload == name]
        vs_two = "-" if tw is None else _ratio(tw, two)
        vs_single = "-" if tw is None else _ratio(tw, single)
        rows.append(
            [
                name,
                _num(tw.tps) if tw else "-",
                _num(two.tps) if two else "-",
                vs_two,
                _met(vs_two, TARGET_VS_PGPOOL2),
                _num(single.tps) if single else "-",
                vs_single,
                _met(vs_single, TARGET_VS_SINGLE) if single else "-",
                "-" if None in failed else _num(sum(f for f in failed if f is not None)),
                " / ".join(_commits(r)[2] if r else "-" for r in (tw, two)),
            ]
        )
    if not rows:
        return []
    return ["## Routing summary (primary + streaming replica)", ""] + _table(header, rows) + [""]


def _met(ratio: str, target: float) -> str:
    if ratio == "-":
        return "-"
    return "yes" if float(ratio) >= target else "NO"


def summary_table(runs: list[RunResult], workloads: list[str], targets: list[str]) -> list[str]:
    """TPS of every (workload, target), with its ratios to its mode's PgBouncer and direct."""
    by_key = {(run.workload, run.target): run for run in runs}
    header = ["workload"] + targets
    # A ratio is shown when some target's reference of its kind ran at all.
    shown = {
        "pgbouncer": any(pgbouncer_of(t) in targets for t in targets),
        "direct": "direct" in targets,
    }
    rows = []
    for name in workloads:
        if WORKLOADS[name].routed:
            continue  # routing_summary's
        row = [name]
        for target in targets:
            run = by_key.get((name, target))
            if run is None:
                row.append("-")
                continue
            text = _num(run.tps)
            refs = {"pgbouncer": pgbouncer_of(target), "direct": "direct"}
            ratios = [_ratio(run, by_key.get((name, refs[kind]))) for kind in REFERENCES]
            ratios = [ratio for kind, ratio in zip(REFERENCES, ratios) if shown[kind]]
            if ratios and any(r != "-" for r in ratios):
                text += " (" + " / ".join(ratios) + ")"
            if not run.ok:
                text += " " + _status(run)
            row.append(text)
        rows.append(row)
    names = [f"÷ {'PgBouncer' if kind == 'pgbouncer' else kind}" for kind in REFERENCES]
    names = [text for kind, text in zip(REFERENCES, names) if shown[kind]]
    legend = f"TPS ({' / '.join(names)})." if names else "TPS."
    if shown["pgbouncer"]:
        legend += " " + PGBOUNCER_LEGEND
    return ["## Summary", "", f"Cells: {legend}", ""] + _table(header, rows) + [""]


def _of(run: Optional[RunResult], value: str) -> str:
    """``value`` for a run that is ok, else its status (or "-" when it did not run)."""
    if run is None:
        return "-"
    return value if run.ok else _status(run)


def transaction_summary(runs: list[RunResult], workloads: list[str]) -> list[str]:
    """Issue #18's comparison: pgpool-tw ÷ PgBouncer, both pooling by transaction."""
    by_key = {(run.workload, run.target): run for run in runs}
    tw_name, bouncer_name = TRANSACTION_PAIR
    header = ["workload", f"{tw_name} TPS", f"{bouncer_name} TPS", "tw ÷ PgBouncer"]
    header += [f"≥ {TARGET_VS_PGBOUNCER:g}?", "servers at start tw / PgBouncer"]
    header += ["CPU µs/tx tw / PgBouncer", "failed tx tw / PgBouncer"]
    rows = []
    notes = []
    for name in workloads:
        if WORKLOADS[name].routed:
            continue
        tw, bouncer = by_key.get((name, tw_name)), by_key.get((name, bouncer_name))
        if tw is None and bouncer is None:
            continue
        pair = (tw, bouncer)
        ratio = "-" if tw is None else _ratio(tw, bouncer)
        rows.append(
            [
                name,
                _of(tw, _num(tw.tps) if tw else "-"),
                _of(bouncer, _num(bouncer.tps) if bouncer else "-"),
                ratio,
                _beats(tw, bouncer, ratio),
                " / ".join("-" if r is None else _servers(r) for r in pair),
                " / ".join("-" if r is None else _num(r.cpu_us_per_tx, 1) for r in pair),
                " / ".join(_of(r, _num(r.failed)) if r else "-" for r in pair),
            ]
        )
        notes += [f"- {name} {r.target}: {r.error}" for r in pair if r is not None and r.error]
    if not rows:
        return []
    intro = (
        f"{tw_name} and {bouncer_name}: pool_mode transaction, "
        + ", ".join(f"{k} = {v}" for k, v in TRANSACTION_POOL.items())
        + ", every other pool setting at its default. Issue #18's target: pgpool-tw ≥ "
        "PgBouncer on S2 (-M prepared) and S5 (500 clients); a PgBouncer that fails a "
        'workload (1.18 fails S2: "prepared statement "P_0" already exists") loses it.'
    )
    lines = ["## Transaction pooling (issue #18)", "", intro, ""] + _table(header, rows)
    return lines + ([""] + notes if notes else []) + [""]


def _beats(tw: Optional[RunResult], bouncer: Optional[RunResult], ratio: str) -> str:
    """Whether pgpool-tw met TARGET_VS_PGBOUNCER: a failed PgBouncer run counts as met."""
    if tw is None or bouncer is None:
        return "-"
    if not tw.ok:
        return f"NO ({tw.target} {_status(tw)})"
    if not bouncer.ok:
        return f"yes ({bouncer.target} {_status(bouncer)})"
    return _met(ratio, TARGET_VS_PGBOUNCER)


#: What S7's SET does to each kind of target's server connections.
_PIN_EFFECT = {
    "pgpool-tw-transaction": "pinned: keeps its server from its first transaction on",
    "pgbouncer-transaction": "no pin: PgBouncer leaves the SET on whichever server ran it",
}


def pinned_table(runs: list[RunResult], workloads: list[str]) -> list[str]:
    """What a pinned session costs: S7 (each client pinned) ÷ S1 (the same transactions,
    unpinned), for every target that ran both, PgBouncer's the yardstick for the script
    and the machine's drift between the two workloads."""
    if PINNED not in workloads or UNPINNED not in workloads:
        return []
    by_key = {(run.workload, run.target): run for run in runs}
    header = ["target", f"{UNPINNED} TPS", f"{PINNED} TPS (pinned)", f"{PINNED} ÷ {UNPINNED}"]
    header += [f"CPU µs/tx {UNPINNED} / {PINNED}", f"servers at start {UNPINNED} / {PINNED}"]
    header += ["what the SET does"]
    rows = []
    ratios: dict[str, float] = {}
    for run in runs:
        if run.workload != PINNED or (UNPINNED, run.target) not in by_key:
            continue
        unpinned = by_key[(UNPINNED, run.target)]
        ratio = _ratio(run, unpinned) if run.ok else "-"
        if ratio != "-" and run.tps is not None and unpinned.tps:
            ratios[run.target] = run.tps / unpinned.tps
        rows.append(
            [
                run.target,
                _of(unpinned, _num(unpinned.tps)),
                _of(run, _num(run.tps)),
                ratio,
                f"{_num(unpinned.cpu_us_per_tx, 1)} / {_num(run.cpu_us_per_tx, 1)}",
                f"{_servers(unpinned)} / {_servers(run)}",
                _PIN_EFFECT.get(run.target, "session pooling: a server per client anyway"),
            ]
        )
    if not rows:
        return []
    tw_name, bouncer_name = TRANSACTION_PAIR
    intro = (
        f"{PINNED} is {UNPINNED}'s transaction, each client pinned by `SET statement_timeout` "
        "outside a transaction block in its first one (bench/pinned-select.sql)."
    )
    lines = (
        ["## Pinned sessions in transaction pooling (issue #18)", "", intro, ""]
        + _table(header, rows)
        + [""]
    )
    if tw_name in ratios and bouncer_name in ratios:
        net = ratios[tw_name] / ratios[bouncer_name]
        lines += [
            f"A pin's cost in {tw_name}, net of the script and the drift between the two "
            f"workloads ({PINNED} ÷ {UNPINNED} over {bouncer_name}'s): {net:.2f}.",
            "",
        ]
    return lines


def memory_table(results: list[MemoryResult]) -> list[str]:
    header = ["pooler", "idle clients", "accepted", "VmRSS before KiB", "VmRSS after KiB"]
    header += ["KiB per idle client", "note"]
    rows = [
        [
            r.target,
            _num(r.clients),
            _num(r.accepted),
            _num(r.rss_before_kib),
            _num(r.rss_after_kib),
            _num(r.kib_per_client, 2),
            r.error or "",
        ]
        for r in results
    ]
    intro = "Idle TCP clients that connect and never send a byte; VmRSS of the pooler process."
    return ["## Memory: idle client connections", "", intro, ""] + _table(header, rows) + [""]


def markdown(
    meta: dict[str, Any],
    runs: list[RunResult],
    memory: list[MemoryResult],
    workloads: list[str],
    targets: list[str],
) -> str:
    lines = ["# pgpool-tw benchmark", ""]
    for key, value in meta.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"- {key}: {value}")
    lines.append("")
    lines.append("## Workloads")
    lines.append("")
    if any(not WORKLOADS[name].routed for name in workloads):
        lines += [PGBOUNCER_LEGEND, ""]
    for name in workloads:
        if WORKLOADS[name].routed:
            lines += routed_table(name, runs)
        else:
            lines += workload_table(name, runs, targets)
    if any(not WORKLOADS[name].routed for name in workloads):
        lines += summary_table(runs, workloads, targets)
    lines += transaction_summary(runs, workloads)
    lines += pinned_table(runs, workloads)
    lines += routing_summary(runs, workloads)
    if memory:
        lines += memory_table(memory)
    return "\n".join(lines) + "\n"


def as_json(meta: dict[str, Any], runs: list[RunResult], memory: list[MemoryResult]) -> str:
    def run_dict(run: RunResult) -> dict[str, Any]:
        return {
            "workload": run.workload,
            "target": run.target,
            "ok": run.ok,
            "tps": run.tps,
            "latency_ms": run.latency_ms,
            "failed_transactions": run.failed,
            "transactions_processed": run.processed,
            "exit_status": run.exit_status,
            "timed_out": run.timed_out,
            "error": run.error,
            "cpu_us": run.cpu_us,
            "cpu_us_per_tx": run.cpu_us_per_tx,
            "cpu_of": run.cpu_of,
            "servers_at_start": run.servers,
            "replica_servers_at_start": run.replica_servers,
            "node_commits": run.node_commits,
            "warmup_processed": run.warmup_processed,
            "wall_s": round(run.wall_s, 3),
            "argv": run.argv,
            "samples": [run_dict(sample) for sample in run.samples],
        }

    def memory_dict(result: MemoryResult) -> dict[str, Any]:
        return {
            "target": result.target,
            "idle_clients": result.clients,
            "accepted": result.accepted,
            "rss_before_kib": result.rss_before_kib,
            "rss_after_kib": result.rss_after_kib,
            "kib_per_idle_client": result.kib_per_client,
            "closed_by_pooler": result.closed_by_pooler,
            "error": result.error,
        }

    data = {
        "meta": meta,
        "runs": [run_dict(run) for run in runs],
        "memory": [memory_dict(result) for result in memory],
    }
    return json.dumps(data, indent=2) + "\n"
