"""The benchmark's command line: which targets and workloads, how long, and where to.

Owns: the options of ``bench/run`` (and ``bench/bench.py``), their defaults and checks.

Must never: start anything.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

from targets import NAMED_ONLY, TARGETS, default_targets
from workloads import DEFAULT_WORKLOADS, WORKLOADS

DESCRIPTION = (
    "pgbench side by side: PostgreSQL, PgBouncer (session, transaction), pgpool-II, pgpool-tw "
    "(session, transaction). Transaction pooling against PgBouncer's (issue #18): "
    "--targets pgbouncer-transaction,pgpool-tw-transaction --workloads S1,S2,S5,S7 --no-memory"
)
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "out", "last-run.md")
DEFAULT_DURATION = 8  # 54 runs of 8 s, their warm-ups, restarts, init and memory: < 10 min
DEFAULT_WARMUP = 50  # transactions per client: S5's 25,000 take about 2 s


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from "
            + ",".join(allowed)
        )
    return [name for name in allowed if name in chosen]  # canonical order, no duplicates


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=DESCRIPTION)
    parser.add_argument(
        "--targets",
        type=lambda t: _choices(t, TARGETS, "target"),
        default=default_targets(),
        help="comma-separated subset of "
        + ",".join(TARGETS)
        + f" (default: all but {','.join(NAMED_ONLY)}, which runs only when named; pgpool-tw-pypy "
        "when bench/run could set up PyPy; both transaction-mode targets get 20 servers per "
        "pool)",
    )
    parser.add_argument(
        "--workloads",
        type=lambda t: _choices(t, tuple(WORKLOADS), "workload"),
        default=list(DEFAULT_WORKLOADS),
        help="comma-separated subset of "
        + ",".join(WORKLOADS)
        + f" (default: {','.join(DEFAULT_WORKLOADS)}; the routed R1..R3 add a streaming "
        "replica and run through the poolers that route, with single-backend pgpool-tw "
        "beside the select-only ones; S7 is S1 with every client pinned by a SET, for "
        "transaction pooling: name it with S1)",
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        default=DEFAULT_DURATION,
        help=f"seconds per pgbench run (default {DEFAULT_DURATION})",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative,
        default=DEFAULT_WARMUP,
        help="transactions per client run untimed before each timed run, on a target just "
        "started, then more rounds while the target's server count grows "
        f"(default {DEFAULT_WARMUP}; 0 times a cold start)",
    )
    parser.add_argument("--scale", type=_positive, default=10, help="pgbench -i -s (default 10)")
    parser.add_argument("--no-memory", action="store_true", help="skip the idle-client part")
    parser.add_argument(
        "--idle-clients",
        type=_positive,
        default=10000,
        help="idle connections for the memory part (default 10000)",
    )
    parser.add_argument("--json", action="store_true", help="also write results as JSON")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="Markdown report path (default bench/out/last-run.md)"
    )
    return parser.parse_args(argv)
