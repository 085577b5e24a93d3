"""The book of open server connections: who is live, and what their sessions counted.

A shutdown waits for every connection in ``live``; observers hear of each one
that opens or closes; ``totals`` keeps, per pool key, what the sessions on
them counted (``stats/counters.py``), harvested from each session's tracker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from pgpool_tw.stats.counters import Totals
from pgpool_tw.stats.events import EventHub

if TYPE_CHECKING:
    from pgpool_tw.pool.backend import BackendProtocol


class ServerBook:
    """Every open server connection, the observers told when one opens or closes,
    and the per-pool totals its sessions counted (see ``stats.counters``)."""

    def __init__(self, events: Optional[EventHub] = None) -> None:
        self.live: set[BackendProtocol] = set()
        self.events = events if events is not None else EventHub()
        self.totals = Totals()

    def harvest(self, server: BackendProtocol) -> None:
        """Bring the totals up to date with what ``server``'s session counted so far."""
        tracker = server.tracker
        if tracker is not None:
            self.totals.harvest(server.pool_key, tracker, server.session_counts)

    def logged_in(self, server: BackendProtocol) -> None:
        self.events.fire("server_connection_opened", server.info())

    def closed(self, server: BackendProtocol) -> None:
        self.live.discard(server)
        if server.pid:
            self.events.fire("server_connection_closed", server.info())
