"""PAUSE and RESUME (PgBouncer's console commands): which databases get no server now.

While a database is paused, a session of it that asks for a server (a login's first,
a transaction-mode client's next transaction) waits here, connected, until RESUME; the
console's PAUSE answers once the database's server connections are gone (service.py
watches them; session/context.py retires them).  This module only keeps the set and the
waiting callbacks: no socket, no timer.  Sessions ask ``active`` first, so a pooler that
was never paused pays one attribute read per login or Python-path transaction.
"""

from __future__ import annotations

from typing import Callable, Optional


class Pause:
    """The paused databases (``everything``: all of them) and who waits for RESUME."""

    __slots__ = ("active", "everything", "databases", "_held")

    def __init__(self) -> None:
        #: Something is paused (the one read on the common path).
        self.active = False
        self.everything = False
        self.databases: set[str] = set()
        self._held: list[tuple[str, Callable[[], object]]] = []

    def paused(self, database: str) -> bool:
        return self.active and (self.everything or database in self.databases)

    def pause(self, database: Optional[str]) -> None:
        """PAUSE [db]: ``None`` pauses every database."""
        if database is None:
            self.everything = True
        else:
            self.databases.add(database)
        self.active = True

    def resume(self, database: Optional[str]) -> Optional[str]:
        """RESUME [db]: ``None`` resumes everything.  Returns why it cannot (a database
        named while every database is paused, or one that is not paused), else None; the
        sessions it frees are called back in the order they came."""
        if database is None:
            if not self.active:
                return "nothing is paused"
            self.everything = False
            self.databases.clear()
        elif self.everything:
            return "every database is paused: RESUME without a name resumes them"
        elif database not in self.databases:
            return f'database "{database}" is not paused'
        else:
            self.databases.discard(database)
        self.active = self.everything or bool(self.databases)
        held, self._held = self._held, []
        for waiting_db, callback in held:
            if self.paused(waiting_db):
                self._held.append((waiting_db, callback))
            else:
                callback()
        return None

    def hold(self, database: str, callback: Callable[[], object]) -> None:
        """``callback`` runs when ``database`` is resumed (a closed session's does nothing)."""
        self._held.append((database, callback))

    @property
    def waiting(self) -> int:
        return len(self._held)
