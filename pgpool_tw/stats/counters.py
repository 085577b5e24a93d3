"""Per-pool running totals: what ended sessions counted, kept until the process ends.

The hot path never touches these.  Session trackers (C or Python) count in
their header walk; their counts are *harvested* here with ``take_counts`` when
a session detaches, when its server is lost, when the warm lane gives a server
back, and when a snapshot is taken, so every count lands exactly once.  Only
Python on the reactor's thread writes them.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Optional


class Counters:
    """One pool key's totals (PgBouncer's SHOW STATS ``total_*`` columns)."""

    __slots__ = ("logins", "xacts", "queries", "bytes_in", "bytes_out", "wait_time")

    def __init__(self) -> None:
        #: Client sessions that got a server connection (logged in), warm ones included.
        self.logins = 0
        self.xacts = 0
        self.queries = 0
        #: Bytes received from clients / sent to them while attached.
        self.bytes_in = 0
        self.bytes_out = 0
        #: Seconds clients spent waiting for a client slot, counted when admitted.
        self.wait_time = 0.0

    def add(self, other: Counters) -> None:
        self.logins += other.logins
        self.xacts += other.xacts
        self.queries += other.queries
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.wait_time += other.wait_time


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
        queries, xacts, bytes_in, bytes_out = tracker.take_counts()
        if queries or bytes_in or bytes_out:
            for counters in (self.of(key), session) if session is not None else (self.of(key),):
                counters.queries += queries
                counters.xacts += xacts
                counters.bytes_in += bytes_in
                counters.bytes_out += bytes_out
