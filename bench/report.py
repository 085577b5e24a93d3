"""The benchmark's report: Markdown tables (printed and written to a file) and JSON.

Owns: one table per workload, the final summary, the idle-client memory table, the
header (date, nproc, versions, settings) and the JSON form of the same results.

Must never: run anything but ``--version`` of the programs whose versions it reports.
"""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from typing import Any, Optional

from memory import MemoryResult
from workloads import WORKLOADS, RunResult, pgbench_args

REFERENCES = ("pgbouncer-session", "direct")


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


def workload_table(name: str, runs: list[RunResult], targets: list[str]) -> list[str]:
    """The Markdown section of one workload: one row per target, in --targets order."""
    by_target = {run.target: run for run in runs if run.workload == name}
    refs = {ref: by_target.get(ref) for ref in REFERENCES}
    workload = WORKLOADS[name]
    header = ["target", "status", "TPS", "TPS of each run", "÷ pgbouncer-session", "÷ direct"]
    header += ["latency ms", "failed tx", "exit", "transactions", "CPU µs/tx", "servers at start"]
    rows = []
    notes = []
    for target in targets:
        run = by_target.get(target)
        if run is None:
            continue
        exit_text = "killed" if run.exit_status is None else str(run.exit_status)
        rows.append(
            [
                target,
                _status(run),
                _num(run.tps),
                " / ".join(_num(sample.tps) for sample in run.samples) or "-",
                _ratio(run, refs["pgbouncer-session"]),
                _ratio(run, refs["direct"]),
                _num(run.latency_ms, 3),
                _num(run.failed) if run.failed is not None else "-",
                exit_text,
                _num(run.processed),
                _cpu(run),
                "-" if run.servers is None else str(run.servers),
            ]
        )
        if run.error:
            notes.append(f"- {target}: {run.error}")
    args = " ".join(pgbench_args(workload))
    lines = [f"### {name}: {workload.title}", "", f"`pgbench {args}`", ""]
    return lines + _table(header, rows) + ([""] + notes if notes else []) + [""]


def summary_table(runs: list[RunResult], workloads: list[str], targets: list[str]) -> list[str]:
    """TPS of every (workload, target), with its ratios to pgbouncer-session and direct."""
    by_key = {(run.workload, run.target): run for run in runs}
    header = ["workload"] + targets
    rows = []
    for name in workloads:
        row = [name]
        for target in targets:
            run = by_key.get((name, target))
            if run is None:
                row.append("-")
                continue
            text = _num(run.tps)
            ratios = [_ratio(run, by_key.get((name, ref))) for ref in REFERENCES if ref in targets]
            if ratios and any(r != "-" for r in ratios):
                text += " (" + " / ".join(ratios) + ")"
            if not run.ok:
                text += " " + _status(run)
            row.append(text)
        rows.append(row)
    shown = " / ".join(f"÷ {ref}" for ref in REFERENCES if ref in targets)
    legend = f"TPS ({shown})" if shown else "TPS"
    return ["## Summary", "", f"Cells: {legend}.", ""] + _table(header, rows) + [""]


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
    for name in workloads:
        lines += workload_table(name, runs, targets)
    lines += summary_table(runs, workloads, targets)
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
