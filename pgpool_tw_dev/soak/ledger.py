"""What the clients saw, and the check of it against the rows PostgreSQL holds.

Every row a client writes has an id of its own.  A psycopg client notes each id as
acknowledged (its COMMIT, or the COPY's CommandComplete, came back), in doubt (the
connection failed after the COMMIT or the end of the COPY was sent: it may or may not
have committed) or aborted (the connection failed, or the process was killed, before
that: it must not be there).  pgbench notes per run the transactions it counted as
processed and the clients it aborted (each at most one commit in doubt).  The check
reads the rows directly from the server, not through the pooler.

Must never: talk to anything; the caller reads the rows.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterable


@dataclasses.dataclass
class BenchRun:
    """One pgbench run: its number (the rows' ``run``), what it reported."""

    run: int
    processed: int = 0
    aborted_clients: int = 0
    #: False when pgbench printed no summary (it never connected, or was killed).
    summary: bool = False
    killed: bool = False
    note: str = ""


class Ledger:
    """The clients' account of their writes; thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.acked: set[int] = set()
        self.in_doubt: set[int] = set()
        self.aborted: set[int] = set()
        #: Ids handed out and not yet noted: a client stuck in its transaction.
        self.open: set[int] = set()
        self.commits = 0  # acknowledged commits of the psycopg clients (a COPY is one)
        self.doubtful_commits = 0
        self.runs: list[BenchRun] = []

    def new_ids(self, count: int = 1) -> list[int]:
        with self._lock:
            ids = [next(self._ids) for _ in range(count)]
            self.open.update(ids)
            return ids

    def ack(self, ids: Iterable[int]) -> None:
        with self._lock:
            self.acked.update(ids)
            self.open.difference_update(ids)
            self.commits += 1

    def doubt(self, ids: Iterable[int]) -> None:
        with self._lock:
            self.in_doubt.update(ids)
            self.open.difference_update(ids)
            self.doubtful_commits += 1

    def abort(self, ids: Iterable[int]) -> None:
        with self._lock:
            self.aborted.update(ids)
            self.open.difference_update(ids)

    def bench(self, run: BenchRun) -> None:
        with self._lock:
            self.runs.append(run)


@dataclasses.dataclass
class Verdict:
    """The ledger against the rows found."""

    acked_commits: int
    acked_rows: int
    doubtful_commits: int
    doubtful_rows: int
    rows_found: int
    #: Acknowledged rows that are not there: lost commits.
    missing: list[int]
    #: Rows there that no client had acknowledged or left in doubt (an aborted
    #: transaction's, or one nobody wrote).
    unexpected: list[int]
    #: Of those, rows of transactions known aborted (killed before their COMMIT).
    aborted_found: list[int]
    #: In-doubt rows that turned out committed.
    doubt_committed: int
    #: pgbench runs whose row count is outside [processed, processed + aborted clients].
    bench_wrong: list[str]
    #: pgbench runs that could not be checked (killed without a summary).
    bench_unchecked: list[int]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.bench_wrong)


def verify(ledger: Ledger, found_ids: set[int], bench_rows: dict[int, int]) -> Verdict:
    """``found_ids``: the psycopg clients' rows; ``bench_rows``: pgbench's rows per run."""
    in_doubt = ledger.in_doubt | ledger.open
    expected = ledger.acked | in_doubt
    missing = sorted(ledger.acked - found_ids)
    unexpected = sorted(found_ids - expected)
    aborted_found = sorted(found_ids & ledger.aborted)
    wrong: list[str] = []
    unchecked: list[int] = []
    bench_acked = bench_doubt = 0
    for run in ledger.runs:
        rows = bench_rows.get(run.run, 0)
        if not run.summary:
            if run.killed:
                unchecked.append(run.run)
            elif rows:
                wrong.append(f"run {run.run}: no summary but {rows} rows")
            continue
        bench_acked += run.processed
        bench_doubt += run.aborted_clients
        if not run.processed <= rows <= run.processed + run.aborted_clients:
            wrong.append(
                f"run {run.run}: {rows} rows for {run.processed} processed, "
                f"{run.aborted_clients} aborted clients"
            )
    known = {run.run for run in ledger.runs}
    for run_number, rows in bench_rows.items():
        if run_number not in known:
            wrong.append(f"run {run_number}: {rows} rows of an unknown run")
    return Verdict(
        acked_commits=ledger.commits + bench_acked,
        acked_rows=len(ledger.acked) + bench_acked,
        doubtful_commits=ledger.doubtful_commits + bench_doubt,
        doubtful_rows=len(in_doubt) + bench_doubt,
        rows_found=len(found_ids)
        + sum(rows for run, rows in bench_rows.items() if run not in unchecked),
        missing=missing,
        unexpected=unexpected,
        aborted_found=aborted_found,
        doubt_committed=len(found_ids & in_doubt),
        bench_wrong=wrong,
        bench_unchecked=unchecked,
    )
