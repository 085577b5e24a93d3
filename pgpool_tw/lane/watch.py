"""What observers and the stats snapshot see of the warm lane, without leaving C.

While observers exist, the lane (``_lane.c``'s ``lane_note``) appends a record
to ``lane.log`` as a warm session starts and as it ends; nothing is recorded
while nobody watches.  ``WarmWatch.drain`` turns the records into
``client_session_started`` / ``client_session_ended`` events.  The service's
tick drains, and so does the lane's Python half before it takes a server back
or promotes a session, so events keep their order and the ones of one session
carry equal ``SessionInfo`` objects, as on Twisted's path.  They arrive up to
a tick (a second) late.

A lent server's tracker counts like any other; ``harvest`` adds its counts, and
the relay's new ``uses`` as logins, to the per-pool totals.  This module never
decides anything about a session or a server.
"""

from __future__ import annotations

import socket
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.stats.counters import Totals
from pgpool_tw.stats.events import EventHub, SessionInfo

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import Lane, Relay
    from pgpool_tw.pool.backend import BackendProtocol

StackKey = tuple[Hashable, str]


class Lent:
    """A server connection lent to the lane: its warm relay and where it parks."""

    __slots__ = ("relay", "stack", "stack_key", "logins")

    def __init__(self, relay: Relay, stack: list[Relay], stack_key: StackKey) -> None:
        self.relay = relay
        self.stack = stack
        self.stack_key = stack_key
        #: The relay's ``uses`` already added to the totals' logins.
        self.logins = 0


class WarmWatch:
    """Turns a lane's session records into observer events, and its counts into totals."""

    def __init__(
        self, lane: Lane, events: EventHub, lent: dict[BackendProtocol, Lent], totals: Totals
    ) -> None:
        self.lane = lane
        self.events = events
        #: The lane's lent servers (WarmLane's own dict, read here).
        self.lent = lent
        self.totals = totals
        #: Warm sessions reported started and not yet ended, by their relay.
        self._started: dict[Relay, SessionInfo] = {}

    def observe(self) -> None:
        """Observers came or went: the lane records sessions only while there are some."""
        if self.events.observers:
            if self.lane.log is None:
                self.lane.log = []
            return
        self.lane.log = None
        self._started.clear()

    def drain(self) -> None:
        """Fire the events of what the lane recorded since the last drain.

        Called before a lent server leaves ``lent``: a session's application
        name is its stack's (the server's parameters may have changed since).
        """
        records = self.lane.log
        if not records:
            return
        self.lane.log = []
        assert speedups is not None
        for kind, relay, address, port in records:
            if kind == speedups.NOTE_STARTED:
                info = _session_info(relay, address, port, self._application_name(relay))
                self._started[relay] = info
                self.events.fire("client_session_started", info)
            else:
                ended = self._started.pop(relay, None)
                if ended is not None:  # else it started before anyone watched
                    self.events.fire("client_session_ended", ended)

    def _application_name(self, relay: Relay) -> str:
        lent = self.lent.get(relay.connection)
        if lent is not None:
            return lent.stack_key[1]
        return str(relay.connection.params.get("application_name", ""))

    # -- stats ---------------------------------------------------------------------

    def harvest_one(self, server: BackendProtocol, lent: Lent) -> None:
        """Add what a lent server's warm sessions counted since the last harvest."""
        self.totals.harvest(server.pool_key, lent.relay.tracker)
        uses = lent.relay.uses
        if uses > lent.logins:
            self.totals.of(server.pool_key).logins += uses - lent.logins
            lent.logins = uses

    def harvest(self) -> None:
        """Bring the totals up to date with every lent server (a snapshot is taken)."""
        for server, lent in self.lent.items():
            self.harvest_one(server, lent)

    def server_states(self) -> dict[BackendProtocol, str]:
        """Lent servers' states as the snapshot names them (Python sees them all idle)."""
        assert speedups is not None
        names = {speedups.W_PARKED: "idle", speedups.W_ACTIVE: "active"}
        return {
            server: names.get(lent.relay.state, "running") for server, lent in self.lent.items()
        }

    def active(self) -> list[tuple[BackendProtocol, Any]]:
        """(server, its session's tracker) of each warm session relayed now: the
        connection lists (SHOW pool_processes, pcp_proc_info) show them too."""
        assert speedups is not None
        return [
            (server, lent.relay.tracker)
            for server, lent in self.lent.items()
            if lent.relay.state == speedups.W_ACTIVE
        ]

    def active_by_key(self) -> dict[Hashable, int]:
        """Warm sessions relayed now, by pool key."""
        assert speedups is not None
        out: dict[Hashable, int] = {}
        for server, lent in self.lent.items():
            if lent.relay.state == speedups.W_ACTIVE:
                out[server.pool_key] = out.get(server.pool_key, 0) + 1
        return out


def _session_info(relay: Relay, address: bytes, port: int, application_name: str) -> SessionInfo:
    server = relay.connection
    if len(address) == 4:
        client = f"{socket.inet_ntop(socket.AF_INET, address)}:{port}"
    elif len(address) == 16:
        client = f"{socket.inet_ntop(socket.AF_INET6, address)}:{port}"
    else:
        client = "local"
    startup = server.startup
    return SessionInfo(client, startup.user, startup.database, application_name, server.pid)
