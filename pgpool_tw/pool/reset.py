"""The reset a server gets before it serves another client: reset_query_list as messages.

Shared by the session-mode pool (pool.py), transaction mode's leases (leases.py: a pinned
client's server) and the warm lane's hand-down (lane/handdown.py).  Pure: no I/O.
"""

from __future__ import annotations

from functools import lru_cache

from pgpool_tw.protocol.messages import IDLE, query

__all__ = ["RESET_TIMEOUT", "reset_batch", "reset_queries"]

#: A reset that has not finished by then leaves a server in an unknown state: it is closed.
RESET_TIMEOUT = 30.0

_NO_OPS_WHEN_IDLE = frozenset({"ABORT", "ROLLBACK"})


def reset_queries(configured: tuple[str, ...], status: int) -> list[str]:
    """reset_query_list, less a leading ABORT/ROLLBACK when no transaction is open.

    Outside a transaction those only make the server warn; skipping them saves
    the server a statement on every session end.
    """
    queries = list(configured)
    if status == IDLE:
        while queries and queries[0].strip().upper() in _NO_OPS_WHEN_IDLE:
            queries.pop(0)
    return queries


@lru_cache(maxsize=32)
def reset_batch(configured: tuple[str, ...], status: int) -> tuple[int, bytes]:
    """How many reset queries a session ending in ``status`` needs, and their messages.

    Built once per reset_query_list and transaction state (a session ends in one
    of three) instead of once per session.
    """
    queries = reset_queries(configured, status)
    return len(queries), b"".join(query(sql) for sql in queries)
