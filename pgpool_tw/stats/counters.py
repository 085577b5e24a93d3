"""Per-pool running totals: what ended sessions counted, kept until the process ends.

The hot path never touches these.  Session trackers (C or Python) count in
their header walk; their counts are *harvested* here with ``take_counts`` when
a session detaches, when its server is lost, when the warm lane gives a server
back, and when a snapshot is taken, so every count lands exactly once.  Only
Python on the reactor's thread writes them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Optional

from pgpool_tw.protocol.relay import HIST_BUCKETS, log2_bucket

__all__ = ["HIST_BUCKETS", "Counters", "Totals", "add_counts", "log2_bucket"]


def add_counts(into: list[int], counts: Sequence[int]) -> None:
    for i, count in enumerate(counts):
        if count:
            into[i] += count


class Counters:
    """One pool key's totals (PgBouncer's SHOW STATS ``total_*`` columns)."""

    __slots__ = (
        "logins",
        "xacts",
        "queries",
        "bytes_in",
        "bytes_out",
        "wait_time",
        "wait_hist",
        "query_time",
        "query_hist",
    )

    def __init__(self) -> None:
        #: Client sessions that got a server connection (logged in), warm ones included.
        self.logins = 0
        self.xacts = 0
        self.queries = 0
        #: Bytes received from clients / sent to them while attached.
        self.bytes_in = 0
        self.bytes_out = 0
        #: Seconds clients spent waiting for a client slot, counted when admitted (in
        #: transaction pooling, for a server at each transaction), and those waits by
        #: log2 bucket.
        self.wait_time = 0.0
        self.wait_hist = [0] * HIST_BUCKETS
        #: Seconds servers spent answering (PgBouncer's query time: from a first Query,
        #: Sync or FunctionCall to the ReadyForQuery that leaves nothing owed), and
        #: those periods by log2 bucket.
        self.query_time = 0.0
        self.query_hist = [0] * HIST_BUCKETS

    def add(self, other: Counters) -> None:
        self.logins += other.logins
        self.xacts += other.xacts
        self.queries += other.queries
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.wait_time += other.wait_time
        add_counts(self.wait_hist, other.wait_hist)
        self.query_time += other.query_time
        add_counts(self.query_hist, other.query_hist)

    def waited(self, seconds: float) -> None:
        """One client's wait ended after ``seconds``."""
        self.wait_time += seconds
        self.wait_hist[log2_bucket(seconds)] += 1


class Totals:
    """Counters by pool key."""

    def __init__(self) -> None:
        self.by_key: dict[Hashable, Counters] = {}

    def of(self, key: Hashable) -> Counters:
        counters = self.by_key.get(key)
        if counters is None:
            counters = self.by_key[key] = Counters()
        return counters

    def harvest(self, key: Hashable, tracker: Any, session: Optional[Counters] = None) -> None:
        """Add what ``tracker`` counted since its last harvest (and zero it there); to
        ``session`` too, the session's own totals (log_disconnections) when it keeps them."""
        take_times = getattr(tracker, "take_times", None)
        if take_times is not None:
            seconds, buckets = take_times()
            if seconds:
                counters = self.of(key)
                counters.query_time += seconds
                add_counts(counters.query_hist, buckets)
        queries, xacts, bytes_in, bytes_out = tracker.take_counts()
        if queries or bytes_in or bytes_out:
            for counters in (self.of(key), session) if session is not None else (self.of(key),):
                counters.queries += queries
                counters.xacts += xacts
                counters.bytes_in += bytes_in
                counters.bytes_out += bytes_out
