"""Repeated events, one log line per kind per second: a flood costs the log nothing.

Anyone can send CancelRequests with wrong keys without logging in (36,284 lines in 8 s
before this, issue #20); a kind's first event in each second is logged as it comes, the
rest only counted, and the next line logged for that kind says how many were left out
("(N more since the last)").  Pure: the caller passes the time, so tests need no clock.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["RateLimit"]


class RateLimit:
    """When to log an event of one kind, and how many of it went unlogged."""

    __slots__ = ("interval", "_next", "_dropped")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = float("-inf")
        self._dropped = 0

    def admit(self, now: float) -> int:
        """-1: leave this event out of the log; else log it, with this many left out
        since the last logged one."""
        if now < self._next:
            self._dropped += 1
            return -1
        self._next = now + self.interval
        dropped, self._dropped = self._dropped, 0
        return dropped

    def more(self, now: float, count: int = 1) -> Optional[str]:
        """``admit`` for ``count`` events at once, as the log line's ending: None to leave
        them out, "" when none was left out before, else " (N more since the last)"."""
        dropped = self.admit(now)
        if dropped < 0:
            self._dropped += count - 1
            return None
        left_out = dropped + count - 1
        return f" ({left_out} more since the last)" if left_out else ""
