"""The parts of a routed session's stream: its legs (one per server) and its units.

A *unit* is one Query, Sync-ended batch or FunctionCall (or one of the pooler's own
queries) and what each leg still owes for it; a *leg* is one server connection as the
stream sees it, handed to ``BackendProtocol.attach`` as that server's tracker.  The
stream that moves them is ``routed.py``'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from pgpool_tw.session.routed import RoutedStream

__all__ = ["Batch", "Leg", "Unit"]


class Unit:
    """One Query, Sync-ended batch or FunctionCall, or one of the pooler's own queries."""

    __slots__ = (
        "leader",
        "owed",
        "held",
        "client",
        "last",
        "rows",
        "done",
        "tx",
        "named",
    )

    def __init__(self, leader: Leg, client: bool = True) -> None:
        self.leader = leader
        #: ReadyForQuery messages still owed, per leg.
        self.owed: dict[Leg, int] = {}
        #: The leader's reply while an earlier unit still answers the client.
        self.held: list[bytes] = []
        #: The reply goes to the client (False: the pooler's own query).
        self.client = client
        #: The leader's final ReadyForQuery, forwarded once every leg has answered.
        self.last = b""
        #: DataRow bodies of the pooler's own query.
        self.rows: list[bytes] = []
        self.done: Optional[Callable[[Unit], None]] = None
        self.tx = ""
        #: Statements the unit parsed on every leg (a leg that refuses one loses it).
        self.named: list[bytes] = []

    def expect(self, leg: Leg) -> None:
        self.owed[leg] = self.owed.get(leg, 0) + 1
        leg.units.append(self)

    @property
    def complete(self) -> bool:
        return not any(self.owed.values())


class Leg:
    """One server connection of a routed session, as the stream sees it.

    Handed to ``BackendProtocol.attach`` as the server's tracker: the server calls
    ``feed_server`` with each chunk, and reads ``status`` when it is detached.
    """

    __slots__ = (
        "node",
        "send",
        "status",
        "params",
        "units",
        "buf",
        "stream",
        "sent",
        "pid",
        "raw_left",
    )

    def __init__(
        self,
        node: int,
        send: Callable[[bytes], None],
        status: int,
        params: dict[str, str],
        pid: int = 0,
    ) -> None:
        self.node = node
        self.send = send
        self.status = status
        self.params = params
        self.pid = pid
        #: Units this leg owes a ReadyForQuery, one entry per ReadyForQuery.
        self.units: deque[Unit] = deque()
        self.buf = b""
        self.stream: Optional[RoutedStream] = None
        #: Bytes queued for this leg during one client chunk.
        self.sent: list[bytes] = []
        #: Bytes of a message the C loop began forwarding to the client (stream.adopt).
        self.raw_left = 0

    def feed_server(self, data: bytes) -> None:
        stream = self.stream
        if stream is not None:
            stream.server_data(self, data)

    @property
    def in_sync(self) -> bool:
        return not self.units and not self.buf

    def take_counts(self) -> tuple[int, int, int, int]:
        """The session's counters, harvested once: through the primary's leg."""
        stream = self.stream
        if stream is None or self is not stream.primary:
            return (0, 0, 0, 0)
        return stream.take_counts()

    def __repr__(self) -> str:
        return f"<Leg node {self.node}>"


class Batch:
    """An extended-protocol batch from its first message to its Sync."""

    __slots__ = ("unit", "legs")

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        #: Every leg that received a message of the batch: each gets the Sync.
        self.legs: list[Leg] = [unit.leader]
