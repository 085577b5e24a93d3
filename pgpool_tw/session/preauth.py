"""Clients that have not finished authenticating: their cap, and what their ends log.

Anybody can open a connection and say nothing, or send a startup packet and never the
password.  Such a client must cost the pooler a socket and a little memory, and nobody
else anything (issue #20): it holds no session slot (num_init_children), no place in a
pool, nothing a real client waits for.  From accept until the end of its authentication
a client is *pre-authentication* here (or, on the C loop, pending in the warm lane's
accept buffer); the two together are capped by ``max_preauth_clients``, and past the
cap the oldest ones are closed first, so a flood evicts itself rather than the clients
that keep arriving.

Floods must not flood the log either: a timeout, a shed client or a failed login is
logged with its address and stage, at most one line per kind a second, with a count of
those left out (``logs/ratelimit.py``).  Every client-supplied value in these lines goes
through ``printable``.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from twisted.logger import Logger

from pgpool_tw.logs.escape import printable
from pgpool_tw.logs.ratelimit import RateLimit

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import Lane

log = Logger()

__all__ = ["PreAuth", "lane_peer", "startup_stage"]


#: A pass-through login answers its server's password request within this long, or may
#: be closed to make room when PostgreSQL has no connection left (``evict_stalled``).
STALL_GRACE = 0.25


class Unauthenticated(Protocol):
    """A session as the cap sees it."""

    def shed(self, cap: int) -> None: ...
    def evict(self) -> None: ...


class PreAuth:
    """The pre-authentication clients of one pooler, oldest first."""

    def __init__(self, clock: Any, cap: Callable[[], int]) -> None:
        self.clock = clock
        self.cap = cap
        #: Python's pre-authentication sessions, by when they were accepted (clock time).
        self._clients: OrderedDict[Unauthenticated, float] = OrderedDict()
        #: The warm lane, whose pending clients count too (the C loop only).
        self.lane: Optional[Lane] = None
        self._timeouts = RateLimit()
        self._shed = RateLimit()
        self._failed = RateLimit()
        self._evicted = RateLimit()
        #: Pass-through logins whose server's password request waits on the client (a
        #: PostgreSQL connection each), oldest first, with when they were asked.
        self._asked: OrderedDict[Unauthenticated, float] = OrderedDict()
        self.evicted_total = 0
        #: Counted for tests and the stats: clients closed for the cap, and at the timeout.
        self.shed_total = 0
        self.timed_out_total = 0
        self.failed_total = 0

    def __len__(self) -> int:
        lane = self.lane
        return len(self._clients) + (int(lane.pending) if lane is not None else 0)

    def counts(self) -> dict[str, int]:
        """For the stats snapshot: clients now, and the totals since start."""
        return {
            "clients": len(self),
            "shed": self.shed,
            "timed_out": self.timed_out_total,
            "evicted": self.evicted_total,
            "failed_logins": self.failed_total,
        }

    @property
    def shed(self) -> int:
        """Clients closed for the cap so far, the lane's not yet logged included."""
        lane = self.lane
        return self.shed_total + (int(lane.shed) if lane is not None else 0)

    def enter(self, client: Unauthenticated, since: float) -> None:
        """``client`` was accepted at ``since`` and is not authenticated yet."""
        self._clients[client] = since
        if len(self) > self.cap():
            self._make_room()

    def leave(self, client: Unauthenticated) -> None:
        """``client`` authenticated or closed."""
        self._clients.pop(client, None)
        self._asked.pop(client, None)

    def asked(self, client: Unauthenticated) -> None:
        """``client``'s server asked it for its password: it holds that server meanwhile."""
        self._asked.pop(client, None)
        self._asked[client] = self.clock.seconds()

    def answered(self, client: Unauthenticated) -> None:
        """``client`` sent its answer: the server, not the client, is to answer next."""
        self._asked.pop(client, None)

    def evict_stalled(self, making_room_for: Unauthenticated) -> bool:
        """PostgreSQL refused a login for want of connections (53300): the pass-through
        login that has waited longest for its client's password (at least
        ``STALL_GRACE``) is closed, giving its server connection back; True when one was.
        Without this a flood of logins that never answer holds every connection the
        server has until authentication_timeout, and real clients with it."""
        now = self.clock.seconds()
        for client, since in self._asked.items():
            if now - since < STALL_GRACE:
                return False  # the rest were asked later still
            if client is not making_room_for:
                del self._asked[client]
                self.evicted_total += 1
                more = self._evicted.more(now)
                if more is not None:
                    log.warn(
                        "a login waiting {seconds:.1f}s for its client's password was closed: "
                        "the server has no connection left for another{more}",
                        seconds=now - since,
                        more=more,
                    )
                client.evict()
                return True
        return False

    def _make_room(self) -> None:
        """Close the oldest pre-authentication clients, Python's or the lane's, until the
        cap holds again."""
        cap, lane, clients = self.cap(), self.lane, self._clients
        while len(self) > cap:
            oldest_lane = lane.oldest_pending() if lane is not None else None
            if clients:
                client, since = next(iter(clients.items()))
                if oldest_lane is None or since <= self._from_monotonic(oldest_lane):
                    del clients[client]
                    self.shed_total += 1
                    client.shed(cap)
                    continue
            if lane is None or not lane.shed_oldest():
                return
            self.shed_total += 1
            self.note_shed("a client of the C loop still sending its startup packet", cap)

    def _from_monotonic(self, at: float) -> float:
        """A CLOCK_MONOTONIC time (the lane's) on this clock."""
        return self.clock.seconds() - (time.monotonic() - at)

    def note_shed(self, peer: str, cap: int, count: int = 1) -> None:
        more = self._shed.more(self.clock.seconds(), count)
        if more is None:
            return
        log.warn(
            "client={client} closed before authenticating: max_preauth_clients ({cap}) "
            "reached, the oldest go first{more}",
            client=peer,
            cap=cap,
            more=more,
        )

    def note_timeout(self, peer: str, stage: str, timeout: float) -> None:
        """A client reached authentication_timeout in ``stage`` (logged at most once a
        second; the next line counts the rest)."""
        self.timed_out_total += 1
        more = self._timeouts.more(self.clock.seconds())
        if more is None:
            return
        log.info(
            "client={client} closed: authentication_timeout ({timeout:g}s) reached while "
            "waiting for {stage}{more}",
            client=peer,
            timeout=timeout,
            stage=stage,
            more=more,
        )

    def note_failed(self, peer: str, user: str, why: str) -> None:
        """A failed login (a wrong password, an unknown user), rate-limited."""
        self.failed_total += 1
        more = self._failed.more(self.clock.seconds())
        if more is None:
            return
        log.info(
            "client={client} user={user} authentication failed: {why}{more}",
            client=peer,
            user=printable(user),
            why=why,
            more=more,
        )

    def lane_swept(self, closed: list[tuple[bytes, int, int, int]], timeout: float) -> None:
        """The lane closed these pending clients at authentication_timeout."""
        for address, port, length, _answered in closed:
            self.note_timeout(lane_peer(address, port), startup_stage(length), timeout)

    def lane_shed(self) -> None:
        """Log (and zero) the lane's count of pending clients it closed for the cap."""
        lane = self.lane
        if lane is None or not lane.shed:
            return
        count, lane.shed = int(lane.shed), 0
        self.shed_total += count
        self.note_shed(
            "clients of the C loop still sending their startup packet", self.cap(), count
        )


def lane_peer(address: bytes, port: int) -> str:
    """``host:port`` of a lane client, as the frontend's ``peer`` writes it."""
    if len(address) == 4:
        return f"{ipaddress.IPv4Address(address)}:{port}"
    if len(address) == 16:
        return f"{ipaddress.IPv6Address(address)}:{port}"
    return "local"


def startup_stage(length: int) -> str:
    """Where a client that timed out before its startup packet was whole had got to."""
    if not length:
        return "the startup packet (nothing received)"
    return f"the rest of the startup packet ({length} bytes received)"
