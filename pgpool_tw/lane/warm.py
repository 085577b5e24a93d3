"""Warm logins: clients the pooler has logged in before, served by the C loop alone.

A client that connects once per transaction (``pgbench -C``, PHP, short
scripts) costs a whole login: on Twisted's path some 300 Python calls, about
twice PgBouncer's CPU per connection (bench/RESULTS.md).  The C loop's ``Lane``
does what PgBouncer does for the common case: accept, answer SSLRequest 'N',
match the startup packet, hand out a pooled server connection with the login's
last messages, relay, and on Terminate reset the server and park it again.

This module keeps every decision in Python by choosing what it lends (the
values themselves are built in warm_handdown.py):

* **Entries**: a client's address and startup packet, byte for byte, mapped to
  a stack of parked servers, learned only after Python logged such a client in
  itself and the login needed nothing the lane cannot give (no TLS, no
  password, no negotiation, a pooled database, a server that asked for no
  password).  The same bytes from the same address get the same answer from
  pool_hba.conf.  A reload or a setting the lane cannot honour forgets them all.
* **Servers**: the pool lends a server it parks when a learned stack wants its
  pool key and application_name, and takes it back whenever it wants one.
  Whatever the lane cannot finish cleanly comes back through ``_event`` and the
  pool decides as on Twisted's path.
* **Clients**: a miss (no entry, an empty stack, a CancelRequest, TLS, no free
  slot, no cancel key left) reaches ``_missed`` with the socket and the bytes
  read, and Python's own login carries on.  A warm session the kernel cannot
  take a send for is *promoted* to an ordinary session on the same server.
* **Observers and stats** never turn the lane off (see warm_watch.py).

Only ``twistd pgpool`` (which installs the C loop) gets a lane.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger

from pgpool_tw.engine import fastpoll
from pgpool_tw.engine.speedups import speedups
from pgpool_tw.lane.handdown import KEYS_LOW, entry, refill_keys, relay_fields
from pgpool_tw.lane.handdown import never as _never
from pgpool_tw.lane.watch import Lent, StackKey, WarmWatch
from pgpool_tw.net import twisted_private
from pgpool_tw.net.transport import plain_socket
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.pool import expired
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.relay import LOCAL_WORDS
from pgpool_tw.session import cancel
from pgpool_tw.session.handshake import GSS_ANSWERED, TLS_ANSWERED, lane_answers

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import Lane, Relay
    from pgpool_tw.session.frontend import FrontendFactory, FrontendProtocol

log = Logger()

#: Entries kept at most (distinct address and startup packet pairs).
MAX_ENTRIES = 4096


class WarmLane:
    """The Python half of the C loop's warm logins, for one FrontendFactory."""

    def __init__(self, factory: FrontendFactory, lane: Lane) -> None:
        assert speedups is not None
        self.factory = factory
        self.lane = lane
        self.entries: dict[bytes, list[Relay]] = lane.entries
        self._stacks: dict[StackKey, list[Relay]] = {}
        self._lent: dict[BackendProtocol, Lent] = {}
        self._ports: dict[int, Any] = {}
        self._given_back: set[int] = set()
        #: A listening port, for the transport of a promoted session (Twisted names it).
        self._any_port: Any = None
        #: Warm sessions handed to Python's relay (a slow client), for tests and logs.
        self.promoted = 0
        #: Observers' and the stats snapshot's view of warm sessions.
        self.watch = WarmWatch(lane, factory.events, self._lent, factory.servers.totals)
        #: The next authentication_timeout sweep of the lane's pending clients.
        self._sweep_call: Any = None
        factory.preauth.lane = lane
        self.apply()

    @classmethod
    def start(cls, factory: FrontendFactory, ports: list[Any]) -> Optional[WarmLane]:
        """A lane accepting on the TCP ``ports``, when the C loop runs on the factory's reactor."""
        if not factory.listeners_tuned:
            return None  # warm clients would miss the socket options set per client
        warm: Optional[WarmLane] = None

        def missed(fd: int, listen_fd: int, data: bytes, answered: int, at: float) -> None:
            assert warm is not None
            warm._missed(fd, listen_fd, data, answered, at)

        def event(kind: int, relay: Optional[Relay], data: Any) -> None:
            assert warm is not None
            warm._event(kind, relay, data)

        lane = fastpoll.new_lane(factory.reactor, missed, event)
        if lane is None:
            return None
        warm = cls(factory, lane)
        for port in ports:
            if isinstance(port.getHost(), (IPv4Address, IPv6Address)):
                fd = port.fileno()
                port.stopReading()
                lane.listen(fd)
                warm._ports[fd] = port
                warm._any_port = port
        return warm if warm._ports else None

    # -- settings ----------------------------------------------------------------

    def apply(self) -> None:
        """The settings changed (or were just read): forget what they may have changed."""
        pool = self.factory.pool
        self.sessions_changed(pool.free_slots(), pool.waiting)
        self.lane.answers = lane_answers(self.factory.tls.frontend is not None)
        self.lane.pending_cap = self.factory.config.preauth_cap
        self._sweep()
        self.watch.observe()
        refill_keys(self.lane)
        self.forget()

    def usable(self) -> bool:
        """Nothing the pooler must do per session is left undone by a warm login."""
        config = self.factory.config
        return (
            not self.lane.closing
            and config.connection_cache
            and not config.log_connections
            and not config.log_disconnections  # a warm session has no end of its own here
            and not config.log_statement  # nor statements Python sees
            and not config.log_per_node_statement
            and config.client_idle_limit <= 0
            and not self.factory.routes
            and not self.factory.pause.active
        )

    def forget(self) -> None:
        """Drop every entry; parked servers go back to the pool at once."""
        self.entries.clear()
        self._stacks.clear()
        for server, lent in list(self._lent.items()):
            if lent.relay.state == speedups.W_PARKED:  # type: ignore[union-attr]
                self._reclaim(server, lent, "")

    # -- learning and lending ----------------------------------------------------

    def learn(self, client: FrontendProtocol, server: BackendProtocol) -> None:
        """A client Python logged in: clients sending the same bytes may be warm."""
        if len(self.entries) >= MAX_ENTRIES or not self.usable():
            return
        learned = entry(client, server)
        if learned is None or learned[0] in self.entries:
            return
        key, stack_key = learned
        stack = self._stacks.get(stack_key)
        if stack is None:
            stack = self._stacks[stack_key] = []
        self.entries[key] = stack

    def lend(self, server: BackendProtocol) -> bool:
        """The pool parks ``server``: park it with the lane if a learned stack wants it."""
        stack_key = (server.pool_key, server.params.get("application_name", ""))
        stack = self._stacks.get(stack_key)
        if stack is None or server.asked_password or not self.usable():
            return False
        transport = server.transport
        if not plain_socket(transport) or transport.fileno() < 0:
            return False
        fields = relay_fields(server, self.factory.config)
        if fields is None:
            return False
        assert speedups is not None
        relay = speedups.Relay(
            speedups.SessionTracker(server.params, m.IDLE, LOCAL_WORDS),
            None,
            transport,
            -1,
            transport.fileno(),
            _never,
            fastpoll.relay_writes(self.factory.reactor),
            lane=self.lane,
            stack=stack,
            connection=server,
            **fields,
        )
        server.park(self)
        self._lent[server] = Lent(relay, stack, stack_key)
        stack.append(relay)
        return True

    def take(self, key: Hashable) -> Optional[BackendProtocol]:
        """A parked server for a Python client of pool key ``key``, taken back from the lane."""
        for stack_key, stack in self._stacks.items():
            if stack_key[0] == key and stack:
                server = stack[-1].connection
                lent = self._lent.get(server)
                if lent is not None:
                    self._reclaim(server, lent, None)
                    return server
        return None

    def _reclaim(self, server: BackendProtocol, lent: Lent, why: Optional[str]) -> None:
        """Take a parked server back: to the caller (``why`` None), the pool, or closed."""
        self._unstack(lent)
        self._returned(server, lent.relay)
        if why is None:
            return
        if why:
            self.factory.pool.discard(server, why)
        else:
            self.factory.pool.park(server)

    @staticmethod
    def _unstack(lent: Lent) -> None:
        """A parked relay leaves its stack (one that is not parked is on none)."""
        if lent.relay in lent.stack:
            lent.stack.remove(lent.relay)

    def _returned(self, server: BackendProtocol, relay: Relay) -> None:
        """The lane is done with ``server``: Python's view of it is brought up to date."""
        self.watch.drain()
        lent = self._lent.pop(server, None)
        if lent is not None:
            self.watch.harvest_one(server, lent)
        relay.drop(b"")
        server.keeper = None
        server.sessions += relay.uses
        server.status = relay.tracker.status

    # -- what the lane asks of Python --------------------------------------------

    def _missed(
        self, fd: int, listen_fd: int, data: bytes, answered: int, accepted_at: float = 0.0
    ) -> None:
        """A client the lane cannot log in: Python's login takes it from where it is,
        its authentication_timeout counted from ``accepted_at`` (CLOCK_MONOTONIC)."""
        if self.lane.keys_left < KEYS_LOW:
            refill_keys(self.lane)  # a burst of warm logins used them up before the tick
        port = self._ports.get(listen_fd)
        if port is None:
            os.close(fd)
            return
        factory = self.factory
        if accepted_at:
            factory.accepted_since = factory.reactor.seconds() - (time.monotonic() - accepted_at)
        try:
            client = self._adopt(port, fd)
        finally:
            factory.accepted_since = None
        if client is None:
            return
        if answered & TLS_ANSWERED:
            client.tls_answered()
        if answered & GSS_ANSWERED:
            client.gss_answered()
        if data:
            client.dataReceived(data)

    def _event(self, kind: int, relay: Optional[Relay], data: Any) -> None:
        try:
            self._handle(kind, relay, data)
        except Exception:
            log.failure("warm lane: event {kind} failed", kind=kind)

    def _handle(self, kind: int, relay: Optional[Relay], data: Any) -> None:
        assert speedups is not None
        pool = self.factory.pool
        if kind == speedups.EV_LEFT:
            pool.admit_waiting()
            return
        if kind == speedups.EV_LISTENER:
            port = self._ports.get(data)
            if port is not None:
                log.warn("warm lane: accept failed; Twisted accepts on {fd} again", fd=data)
                self._given_back.add(data)
                port.startReading()
            return
        assert relay is not None  # every other event is about a warm relay
        server = relay.connection
        self._returned(server, relay)
        if kind == speedups.EV_ENDED:
            tracker = relay.tracker
            # A Terminate may end a transaction (the reset aborts it); end of file may not.
            pool.give_back(server, tracker.in_sync and (data or tracker.status == m.IDLE))
        elif kind == speedups.EV_RESET:
            if data:
                pool.park(server)  # reset; only its parameters changed: the reply is rebuilt
            else:
                pool.discard(server, "reset failed")
        elif kind == speedups.EV_PROMOTE:
            fd, rest, unsent = data
            self._promote(server, relay, fd, rest, unsent)

    def _promote(
        self, server: BackendProtocol, relay: Relay, fd: int, rest: bytes, unsent: bytes = b""
    ) -> None:
        """A warm session goes on as an ordinary client session on the same server: it
        is owed ``rest``, and ``unsent`` is what the client sent that Python must read
        first (a Query the tracker stopped before: pgpool-II's SQL commands).

        Observers hear of the warm part's start and end first (``_returned``
        drained the lane's records), then of the Python session that carries on.
        """
        self.promoted += 1
        server.sessions -= 1  # counted by the lane; attach counts it again
        client = self._adopt(self._any_port, fd)
        if client is None:
            pool = self.factory.pool
            tracker = relay.tracker
            pool.give_back(server, tracker.in_sync and tracker.status == m.IDLE)
            return
        client.received = relay.received  # a drain asks whether the client spoke yet
        client.resume(server, relay.tracker, relay.secret, rest)
        if unsent:
            client.dataReceived(unsent)

    def _adopt(self, port: Any, fd: int) -> Optional[FrontendProtocol]:
        """What Twisted's Port.doRead does with an accepted socket; None if it is gone."""
        skt = socket.socket(fileno=fd)  # family and type read from the socket
        skt.setblocking(False)
        try:
            addr = skt.getpeername()
        except OSError:
            skt.close()
            return None
        if len(addr) == 4:
            host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
            addr = (host[0],) + tuple(addr[1:])
        return twisted_private.adopt_socket(port, skt, addr, self.factory, self.factory.reactor)

    # -- the pool's and the service's calls --------------------------------------

    @property
    def active(self) -> int:
        """Client sessions the lane relays now (they hold client slots)."""
        return int(self.lane.active)

    @property
    def parked(self) -> int:
        return sum(len(stack) for stack in self._stacks.values())

    def sessions_changed(self, free_slots: int, waiting: int) -> None:
        """The pool's free client slots: a warm login takes one and gives it back."""
        self.lane.free = max(free_slots, 0)
        self.lane.wake = int(waiting > 0)

    def find(self, pid: int, secret: int) -> Optional[BackendProtocol]:
        """The server a warm session's cancel key points at."""
        server = self.lane.find(pid & 0xFFFFFFFF, secret & 0xFFFFFFFF)
        return server if isinstance(server, BackendProtocol) else None

    def cancel_target(self, pid: int, secret: int) -> Optional[list[cancel.Target]]:
        """Where a CancelRequest with a warm session's key goes: None for a key of no
        warm session; [] when its statement answered already (the C relay's tracker has
        seen the ReadyForQuery); else its server, while that statement may still run
        and the same warm session holds it (``session/cancel.py``)."""
        server = self.find(pid, secret)
        lent = self._lent.get(server) if server is not None else None
        if server is None or lent is None:
            return None
        relay = lent.relay
        tracker = relay.tracker
        still = cancel.in_flight(tracker)
        if still is None:
            return []
        uses = relay.uses

        def same_session() -> bool:
            active = relay.state == speedups.W_ACTIVE  # type: ignore[union-attr]
            return active and relay.uses == uses and relay.tracker is tracker and still()

        return [cancel.Target(server.node, server.pid, server.secret, same_session)]

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """A lent server closed: its warm client, if any, is told as on Twisted's path."""
        self.watch.drain()
        lent = self._lent.pop(server, None)
        if lent is None:
            return
        self.watch.harvest_one(server, lent)
        self._unstack(lent)
        last_words = b""
        if lent.relay.state == speedups.W_ACTIVE:  # type: ignore[union-attr]
            log.warn("server={server} lost mid-session: {why}", server=server.node.address, why=why)
            tracker = lent.relay.tracker
            if tracker.server_at_boundary and tracker.pending:  # see Session._end_relay
                last_words = m.error_response("08006", "server closed the connection unexpectedly")
        lent.relay.drop(last_words)
        self.factory.pool.server_lost(server, why)

    def tick(self) -> None:
        """Life times of parked servers, the lane's sheds to log, a listener to take back."""
        config = self.factory.config
        now = time.monotonic()
        refill_keys(self.lane)
        self.factory.preauth.lane_shed()
        for fd in list(self._given_back):
            port = self._ports.get(fd)
            if port is not None and not self.lane.closing:
                port.stopReading()
                self.lane.listen(fd)
            self._given_back.discard(fd)
        last_use: dict[StackKey, float] = {}
        for lent in self._lent.values():
            at = now if lent.relay.state != speedups.W_PARKED else lent.relay.parked_at  # type: ignore[union-attr]
            last_use[lent.stack_key] = max(at, last_use.get(lent.stack_key, 0.0))
        for server, lent in list(self._lent.items()):
            if lent.relay.state != speedups.W_PARKED:  # type: ignore[union-attr]
                continue
            if self._stacks.get(lent.stack_key) is not lent.stack:
                self._reclaim(server, lent, "")  # its entries were forgotten
                continue
            why = expired(config, now, lent.relay.parked_at, last_use[lent.stack_key])
            if why:
                self._reclaim(server, lent, why)

    def _sweep(self) -> None:
        """Close the pending clients whose authentication_timeout is up, and come back
        when the next one's is: the oldest's deadline, or a whole timeout from now when
        none is pending (a client accepted later has a later deadline).  Python's timing,
        C's close, on one clock (CLOCK_MONOTONIC)."""
        self.stop_timers()
        timeout = self.factory.config.authentication_timeout
        if timeout <= 0:
            return
        now = time.monotonic()
        closed = self.lane.sweep(now - timeout)
        if closed:
            self.factory.preauth.lane_swept(closed, timeout)
        oldest = self.lane.oldest_pending()
        due = oldest + timeout if oldest is not None else now + timeout
        self._sweep_call = self.factory.reactor.callLater(
            max(0.0, due - time.monotonic()), self._sweep
        )

    def stop_timers(self) -> None:
        """No sweep is left scheduled (the service stopped, or sweeps again now)."""
        call, self._sweep_call = self._sweep_call, None
        if call is not None and call.active():
            call.cancel()

    def reclaim_all(self, why: str) -> int:
        """Close every parked server (close_idle, a shutdown); returns how many."""
        parked = [
            (server, lent)
            for server, lent in self._lent.items()
            if lent.relay.state == speedups.W_PARKED  # type: ignore[union-attr]
        ]
        for server, lent in parked:
            self._reclaim(server, lent, why)
        return len(parked)

    def stop(self, drop_pending: bool = True) -> None:
        """A shutdown: accept no more, and hand every warm session to Python's own path.

        A drain keeps the logins under way (``drop_pending=False``): the lane, closing,
        hands each to Python's login when its startup packet is whole."""
        self.lane.closing = 1
        for fd in self._ports:
            self.lane.unlisten(fd)
        if drop_pending:
            self.lane.drop_pending()
            self.stop_timers()
        for relay in self.lane.sessions():
            relay.promote()
        self.forget()
