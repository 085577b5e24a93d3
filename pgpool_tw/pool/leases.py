"""Transaction pooling's servers: lent one transaction at a time, counted per pool key.

A transaction-mode client holds a server only from the first message of a
transaction to the ReadyForQuery that says idle.  Per pool key this module owns
the servers those clients borrow (its *members*), how many there are against
``default_pool_size`` (``reserve_pool_size`` more once a client has waited
``reserve_pool_timeout``), the clients waiting for one in arrival order, and
the timers: ``query_wait_timeout``, ``server_idle_timeout`` (never below
``min_pool_size``) and the ``min_pool_size`` top-up.  PgBouncer's names and
meanings.

A key's count is its members plus the places handed out for new servers still
opening; every way a member or a place ends takes exactly one off it.  Each
member is either *lent* (a client has it; the client's session watches it and
calls ``forget`` if it closes) or *idle* (parked here, ``server.park(self)``:
this object is its keeper and hears ``server_lost``).

Rules of the code: every callback (``got``, ``expired``, ``opener``) runs after
the structures are whole, from one queue drained by the outermost call, so a
callback that calls back in (a failed open handing its place on) never sees a
half-made change nor recurses once per waiter.  Waiters never wait while an
idle server sits here: a server no waiter may use (it asked for a password, the
waiters were not verified) is closed and its place given to the first waiter.
This module never touches the reactor except through ``clock.seconds()``, never
reads client bytes, and never decides a session's rules (when to release, what
pins): the session does.

On the C loop each key has a *lane* (engine/_txlane.c, made by ``make_lane``): the
servers this module lends it (``laned``, still members and counted) park there, and
the lane runs the simple transactions of the clients its sessions armed, waiting
clients included, without Python.  This module still decides everything: which
servers go there (plain sockets that asked no client for a password), when it takes
one back (a Python lease, a timer, a failover, a shutdown), the order between the
lane's waiters and its own (``arrive``/``py_first``: one sequence), and whether a
lane's client may ask Python for a new server instead of waiting (``room``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pgpool_tw.config.settings import Config
from pgpool_tw.engine import fastpoll
from pgpool_tw.net.deadlines import Deadline, Deadlines
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.reset import RESET_TIMEOUT, reset_batch
from pgpool_tw.stats.counters import Totals, add_counts

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import TxLane, TxServer

#: A pool key (pool/key.py's ``PoolKey``, or anything hashable in tests).
Key = Hashable

log = Logger()

Got = Callable[[Optional[BackendProtocol]], None]

#: engine/_txlane.c's events: a freed server for Python's first waiter, a parked one
#: that became readable (Twisted reads it now), a retired one freed (to be closed).
EV_TX_RETURN, EV_TX_LOST, EV_TX_RETIRED = 1, 2, 3

_TAGS: dict[str, int] = {}


def settings_tag(application_name: str) -> int:
    """The number a lane compares to pair a client with a server whose session has the
    settings it expects (only application_name varies among those a lane takes)."""
    tag = _TAGS.get(application_name)
    if tag is None:
        if len(_TAGS) >= 100000:
            _TAGS.clear()
        tag = _TAGS[application_name] = len(_TAGS)
    return tag


def server_tag(server: BackendProtocol) -> int:
    """A server's settings tag; -1 (no client's) when it carries replayed settings."""
    if server.replayed:
        return -1
    return settings_tag(server.params.get("application_name", ""))


class LeaseStats(NamedTuple):
    """One pool key as the stats snapshot sees it (PgBouncer's SHOW POOLS, in part)."""

    active: int  # members lent to a client now
    idle: int
    opening: int  # places handed out for servers not yet opened
    waiting: int
    max_wait: float  # seconds the longest-waiting client has waited


class Ticket:
    """A client waiting for a server of ``key``: what ``withdraw`` takes back."""

    __slots__ = ("key", "got", "expired", "verified", "since", "waiting", "seq")

    def __init__(
        self, key: Key, got: Got, expired: Callable[[], None], verified: bool, since: float
    ) -> None:
        self.key = key
        self.got = got
        self.expired = expired
        self.verified = verified
        self.since = since
        #: Still in its key's queue (not served, expired nor withdrawn).
        self.waiting = True
        #: Its arrival number on its key's lane (0: no lane).
        self.seq = 0


class _Key:
    """One pool key's members, places and queue."""

    __slots__ = ("idle", "lent", "opening", "waiters", "used", "lane", "laned")

    def __init__(self) -> None:
        #: Parked members, least recently used first (dict: ordered, O(1) removal).
        self.idle: dict[BackendProtocol, None] = {}
        self.lent: set[BackendProtocol] = set()
        self.opening = 0
        self.waiters: OrderedDict[Ticket, None] = OrderedDict()
        #: A client has leased here: min_pool_size keeps servers open for it from now on.
        self.used = False
        #: The key's lane on the C loop, and the members lent to it (parked there or
        #: serving one of its transactions).
        self.lane: Optional[TxLane] = None
        self.laned: dict[BackendProtocol, TxServer] = {}

    @property
    def count(self) -> int:
        return len(self.idle) + len(self.lent) + self.opening + len(self.laned)


def _may_use(verified: bool, server: BackendProtocol) -> bool:
    """A server that asked its first client for a password goes only to verified clients."""
    return verified or not server.asked_password


class Leases:
    """Every transaction-mode server by pool key, and the clients waiting for one."""

    def __init__(self, config: Callable[[], Config], clock: IReactorTime, totals: Totals) -> None:
        self.config = config
        self.clock = clock
        #: Per pool key: the time waiting clients waited (``Counters.wait_time``).
        self.totals = totals
        #: Opens a server for ``key`` alone (min_pool_size), for a place already counted;
        #: it later calls ``opened(server)`` then ``release(server, True)``, or ``open_failed``.
        self.opener: Optional[Callable[[Key], None]] = None
        #: Set by a fast shutdown: servers coming back are closed and no new one is opened.
        self.closing = False
        #: Makes a key's lane, given the lane's event callback (None: no C loop).
        self.make_lane: Optional[Callable[[Callable[[int, TxServer], None]], Optional[TxLane]]]
        self.make_lane = None
        self._keys: dict[Key, _Key] = {}
        self._lanes: dict[Key, TxLane] = {}
        self._due: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._draining = False
        #: Pinned clients' servers being reset (``reset_and_release``), on one timer.
        self._resets: dict[BackendProtocol, Deadline] = {}
        self._reset_deadlines = Deadlines(clock, RESET_TIMEOUT)

    # -- callbacks, last -----------------------------------------------------------

    def _call_due(self) -> None:
        """Run the queued callbacks; the outermost call drains what nested calls add."""
        if self._draining:
            return
        self._draining = True
        due = self._due
        try:
            while due:
                callback, args = due.popleft()
                try:
                    callback(*args)
                except Exception:
                    # One client's broken callback must not strand the others queued.
                    log.failure("transaction pool callback failed")
        finally:
            self._draining = False

    def _state(self, key: Key) -> _Key:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
            state.lane = self._lanes.get(key)
        return state

    # -- the lanes (engine/_txlane.c) -------------------------------------------------

    def lane(self, key: Key) -> Optional[TxLane]:
        """``key``'s lane, made at its first client; None without the C loop."""
        lane = self._lanes.get(key)
        if lane is None and self.make_lane is not None and not self.closing:
            lane = self.make_lane(lambda kind, tx: self._lane_event(key, kind, tx))
            if lane is not None:
                self._lanes[key] = lane
                state = self._state(key)
                state.lane = lane
                self._lane_sync(state)
        return lane

    @property
    def lanes(self) -> dict[Key, TxLane]:
        """The lanes made so far by pool key (tests and the stats read their counts)."""
        return dict(self._lanes)

    def _lane_sync(self, state: _Key) -> None:
        """Tell the lane what it decides with: Python's first waiter, and whether a client
        of its may ask Python for a server (one is parked here, or a place is free)."""
        lane = state.lane
        if lane is None:
            return
        waiters = state.waiters
        lane.py_first = next(iter(waiters)).seq if waiters else (1 if self.closing else 0)
        lane.room = not self.closing and (
            bool(state.idle) or state.count < self.config().default_pool_size
        )

    def _lane_event(self, key: Key, kind: int, tx: TxServer) -> None:
        """The lane handed a member back: for Python's first waiter, or readable while
        parked (Twisted reads it now: a close is heard through ``server_lost``)."""
        state = self._keys.get(key)
        server = tx.backend
        if state is None or state.laned.pop(server, None) is None:
            return
        if kind == EV_TX_LOST:
            state.idle[server] = None
        elif kind == EV_TX_RETIRED:
            self._close(server)
            self._offer_places(state)
        else:
            state.lent.add(server)
            waiters = state.waiters
            if waiters and not self.closing:
                self._served(waiters.popitem(last=False)[0], server)
            else:
                self._lane_sync(state)  # py_first was stale: release parks it there
                self.release(server, True)
                return
        self._lane_sync(state)
        self._call_due()

    def adopted(self, server: BackendProtocol) -> None:
        """A lane's transaction went to its session (Python's from here): lent."""
        state = self._keys.get(server.pool_key)
        if state is not None and state.laned.pop(server, None) is not None:
            state.lent.add(server)

    def _to_lane(self, state: _Key, server: BackendProtocol) -> bool:
        """Park ``server`` on its key's lane if the lane may lend it to anyone."""
        lane = state.lane
        if lane is None or server.asked_password:
            return False
        tx = fastpoll.tx_server(server, server_tag(server))
        if tx is None:
            return False
        state.lent.discard(server)
        state.laned[server] = tx
        server.park(self)
        lane.give(tx)
        return True

    def _lane_idle(self, state: _Key) -> list[tuple[BackendProtocol, TxServer, float]]:
        lane = state.lane
        if lane is None or not state.laned:
            return []
        return [(tx.backend, tx, age) for tx, age in lane.idle()]

    def _from_lane(self, state: _Key, server: BackendProtocol, tx: TxServer) -> None:
        """A parked member out of the lane, to be closed."""
        lane = state.lane
        if lane is not None:
            lane.remove(tx)
        state.laned.pop(server, None)

    # -- borrowing -----------------------------------------------------------------

    def lease(
        self, key: Key, got: Got, expired: Callable[[], None], verified: bool = True
    ) -> Optional[Ticket]:
        """A server of ``key`` for one transaction: ``got(server)``, or ``got(None)`` with a
        place counted for a server the caller opens; else the client waits (returns its
        Ticket) until one is released, a place frees, or ``expired()`` at query_wait_timeout.

        The most recently used idle server goes first (PgBouncer's LIFO: its caches are
        warm and the rest may reach server_idle_timeout).
        """
        state = self._state(key)
        state.used = True
        if not state.waiters:
            server = self._take_idle(state, verified)
            if server is not None:
                state.lent.add(server)
                got(server)
                return None
            config = self.config()
            if state.count < config.default_pool_size:
                state.opening += 1
                got(None)
                return None
            unusable = next(iter(state.idle), None)
            if unusable is not None:
                # Full, and every idle one asked for a password this client did not give
                # to the pooler: its place is worth more to a client that can use it.
                del state.idle[unusable]
                state.opening += 1
                self._close(unusable)
                got(None)
                return None
        ticket = Ticket(key, got, expired, verified, self.clock.seconds())
        if state.lane is not None:
            ticket.seq = state.lane.arrive()
        state.waiters[ticket] = None
        self._offer_places(state)  # places a reload made, to the queue in its order
        self._lane_sync(state)
        self._call_due()
        return ticket if ticket.waiting else None

    def _take_idle(self, state: _Key, verified: bool) -> Optional[BackendProtocol]:
        """The most recently used idle server this client may use; stale ones met on the
        way (their node failed over since they parked) are closed."""
        idle = state.idle
        if not idle:
            return self._take_laned(state)
        found: Optional[BackendProtocol] = None
        dead: list[BackendProtocol] = []
        for server in reversed(idle):
            if server.stale or not server.connected_ok:
                dead.append(server)
            elif _may_use(verified, server):
                found = server
                break
        for server in dead:
            del idle[server]
            self._close(server)
        if found is not None:
            del idle[found]
            return found
        return self._take_laned(state)

    def _take_laned(self, state: _Key) -> Optional[BackendProtocol]:
        """The lane's most recently parked member (any client may use it), out of it."""
        lane = state.lane
        while lane is not None and state.laned:
            tx = lane.take()
            if tx is None:
                return None
            server = tx.backend
            state.laned.pop(server, None)
            if server.stale or not server.connected_ok:
                self._close(server)
                continue
            self._lane_sync(state)
            return server
        return None

    def withdraw(self, ticket: Ticket) -> None:
        """A waiting client left (it closed, or was cancelled) before it got a server."""
        if not ticket.waiting:
            return
        ticket.waiting = False
        state = self._keys.get(ticket.key)
        if state is not None:
            state.waiters.pop(ticket, None)
            self._lane_sync(state)

    def opened(self, server: BackendProtocol) -> None:
        """The place ``got(None)`` or the opener counted is ``server``'s now: a lent member
        (until ``release``, or ``forget`` if it closes first)."""
        state = self._state(server.pool_key)
        if state.opening:
            state.opening -= 1
        else:
            log.warn("server={server} opened without a place counted", server=server)
        state.lent.add(server)
        self._lane_sync(state)

    def open_failed(self, key: Key) -> None:
        """The server a place was counted for never opened: the place goes to the next waiter."""
        state = self._keys.get(key)
        if state is None or not state.opening:
            return
        state.opening -= 1
        self._offer_places(state)
        self._lane_sync(state)
        self._call_due()

    # -- giving back ----------------------------------------------------------------

    def reset_and_release(self, server: BackendProtocol) -> None:
        """A pinned client left with its server idle and in sync: reset_query_list
        (default ``ABORT; DISCARD ALL``) clears what pinned it, then the server serves
        others; a reset that fails (or a list that resets nothing) closes it.  The server
        keeps its place in the key's count meanwhile."""
        server.detach()
        count, messages = reset_batch(self.config().reset_query_list, server.status)
        if not count or self.closing or not server.connected_ok:
            self.release(server, False)
            return
        server.keeper = None
        self._resets[server] = self._reset_deadlines.start(self._reset_timed_out, server)
        server.run_batch(count, messages, self._reset_done)

    def _reset_timed_out(self, server: BackendProtocol) -> None:
        """The reset did not finish in RESET_TIMEOUT: the server is closed and its place
        given back."""
        server.terminate()  # CLOSED at once: its connectionLost will not end the reset
        self._reset_done(server, False)

    def stop_timers(self) -> None:
        """The service stopped: leave no reset timer scheduled on the reactor."""
        self._reset_deadlines.close()

    def _reset_done(self, server: BackendProtocol, ok: bool) -> None:
        timer = self._resets.pop(server, None)
        if timer is not None and timer.active():
            timer.cancel()
        server.was_reset()
        self.release(server, ok)

    def release(self, server: BackendProtocol, clean: bool) -> None:
        """A transaction is over (``clean``: ReadyForQuery said idle with nothing owed).

        A server a client logged in with itself joins the key if the key has room,
        else it closes.  A member goes to the first waiter that may use it, or parks.
        """
        key = server.pool_key
        state = self._keys.get(key)
        if state is not None and server in state.idle:
            return  # released twice: it is parked already, and detach would unwatch it
        server.detach()
        config = self.config()
        fit = clean and not self.closing and not server.stale and server.connected_ok
        if state is None or server not in state.lent:
            state = self._state(key)
            if not fit or state.count >= config.default_pool_size:
                self._close(server)
                self._call_due()
                return
            state.used = True
            state.lent.add(server)
        elif fit and state.count > config.default_pool_size + config.reserve_pool_size:
            fit = False  # a reload lowered the limit: shrink as servers come back
        if not fit:
            state.lent.discard(server)
            self._close(server)
            self._offer_places(state)
            self._lane_sync(state)
            self._call_due()
            return
        waiters = state.waiters
        lane = state.lane
        if lane is not None and (not waiters or lane.waiting) and self._to_lane(state, server):
            # The lane serves its first waiter or Python's (EV_TX_RETURN), or parks it.
            self._lane_sync(state)
            self._call_due()
            return
        if waiters:
            for ticket in waiters:
                if _may_use(ticket.verified, server):
                    del waiters[ticket]
                    self._served(ticket, server)
                    break
            else:
                # No waiter may use it: it closes and the first waiter opens one instead.
                state.lent.discard(server)
                state.opening += 1
                self._served(waiters.popitem(last=False)[0], None)
                self._close(server)
            self._call_due()
            return
        state.lent.discard(server)
        state.idle[server] = None
        server.park(self)
        if lane is not None:
            self._lane_sync(state)
            if lane.waiting:
                # Its waiters may not use what parks here: the first asks Python.
                self._due.append((lane.kick, ()))
                self._call_due()

    def _served(self, ticket: Ticket, server: Optional[BackendProtocol]) -> None:
        """``ticket`` is out of its queue and its server or place counted: tell it, last."""
        ticket.waiting = False
        self.totals.of(ticket.key).waited(self.clock.seconds() - ticket.since)
        self._due.append((ticket.got, (server,)))

    def _offer_places(self, state: _Key) -> None:
        """Hand free places to the queue in arrival order: each served waiter opens one.
        The lane's waiters are sent to Python for the places Python's leave free."""
        if self.closing:
            return
        if not state.waiters:
            lane = state.lane
            if lane is not None and lane.waiting:
                free = self.config().default_pool_size - state.count
                for _ in range(min(free, lane.waiting)):
                    self._due.append((lane.kick, ()))
            return
        config = self.config()
        now = self.clock.seconds()
        waiters = state.waiters
        while waiters:
            ticket = next(iter(waiters))
            if not self._room(state, ticket, config, now):
                return
            del waiters[ticket]
            state.opening += 1
            self._served(ticket, None)

    @staticmethod
    def _room(state: _Key, ticket: Ticket, config: Config, now: float) -> bool:
        count = state.count
        if count < config.default_pool_size:
            return True
        reserve, after = config.reserve_pool_size, config.reserve_pool_timeout
        return (
            reserve > 0
            and after > 0
            and now - ticket.since >= after
            and count < config.default_pool_size + reserve
        )

    # -- members that close -----------------------------------------------------------

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """Keeper protocol: an idle member closed (the server went away)."""
        self.forget(server)

    def forget(self, server: BackendProtocol) -> None:
        """A member closed (a client had it, or it sat idle): its place goes to the next
        waiter.  A server that is no member (forgotten already) changes nothing."""
        state = self._keys.get(server.pool_key)
        if state is None:
            return
        if server in state.lent:
            state.lent.discard(server)
        elif server in state.idle:
            del state.idle[server]
        elif server in state.laned:
            self._from_lane(state, server, state.laned[server])
        else:
            return
        self._offer_places(state)
        self._lane_sync(state)
        self._call_due()

    def _close(self, server: BackendProtocol) -> None:
        """Close a server already out of every structure (terminate unwatches it first)."""
        if server.connected_ok:
            server.terminate()

    def is_member(self, server: BackendProtocol) -> bool:
        state = self._keys.get(server.pool_key)
        return state is not None and (
            server in state.lent or server in state.idle or server in state.laned
        )

    # -- time ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Once a second: expire waiters past query_wait_timeout, close idle servers past
        server_idle_timeout (keeping min_pool_size), give waiters past reserve_pool_timeout
        the reserve, and top used keys up to min_pool_size through ``opener``."""
        config = self.config()
        now = self.clock.seconds()
        for key, state in list(self._keys.items()):
            self._expire_waiters(state, config, now)
            self._trim_idle(state, config, now)
            self._offer_places(state)
            self._top_up(key, state, config)
            self._lane_reserve(key, state, config)
            self._lane_sync(state)
            if (
                not state.count
                and not state.waiters
                and not (state.used and config.min_pool_size)
                and state.lane is None
            ):
                del self._keys[key]
        self._call_due()

    def _expire_waiters(self, state: _Key, config: Config, now: float) -> None:
        limit = config.query_wait_timeout
        if limit <= 0:
            return
        waiters = state.waiters
        while waiters:
            ticket = next(iter(waiters))
            if now - ticket.since < limit:
                return
            del waiters[ticket]
            ticket.waiting = False
            self._due.append((ticket.expired, ()))
        if state.lane is not None and state.lane.waiting:
            for client in state.lane.expire(limit):
                self._due.append((client.owner, ()))

    def _trim_idle(self, state: _Key, config: Config, now: float) -> None:
        ceiling = config.default_pool_size + config.reserve_pool_size
        floor = min(config.min_pool_size, config.default_pool_size)
        limit = config.server_idle_timeout
        for server in list(state.idle):  # least recently used first
            count = state.count
            if count > ceiling or (
                limit > 0 and now - server.idle_since >= limit and count > floor
            ):
                del state.idle[server]
                self._close(server)
        for server, tx, age in self._lane_idle(state):
            count = state.count
            if count > ceiling or (limit > 0 and age >= limit and count > floor):
                self._from_lane(state, server, tx)
                self._close(server)

    def _lane_reserve(self, key: Key, state: _Key, config: Config) -> None:
        """The lane's first waiter waited reserve_pool_timeout: a reserve server is
        opened for it (by ``opener``, as min_pool_size's are; parked, it serves it)."""
        lane = state.lane
        if lane is None or not lane.waiting or self.opener is None or self.closing:
            return
        reserve, after = config.reserve_pool_size, config.reserve_pool_timeout
        if (
            reserve > 0
            and after > 0
            and not state.opening
            and lane.max_wait >= after
            and state.count < config.default_pool_size + reserve
        ):
            state.opening += 1
            self._due.append((self.opener, (key,)))

    def _top_up(self, key: Key, state: _Key, config: Config) -> None:
        opener = self.opener
        if opener is None or self.closing or not state.used:
            return
        need = min(config.min_pool_size, config.default_pool_size) - state.count
        for _ in range(need):
            state.opening += 1
            self._due.append((opener, (key,)))

    # -- the whole pool ---------------------------------------------------------------

    def stats(self) -> dict[Key, LeaseStats]:
        now = self.clock.seconds()
        out: dict[Key, LeaseStats] = {}
        for key, state in self._keys.items():
            first = next(iter(state.waiters), None)
            waited = now - first.since if first is not None else 0.0
            lane = state.lane
            laned_idle = lane.idle_count if lane is not None else 0
            out[key] = LeaseStats(
                len(state.lent) + len(state.laned) - laned_idle,
                len(state.idle) + laned_idle,
                state.opening,
                len(state.waiters) + (lane.waiting if lane is not None else 0),
                max(waited, lane.max_wait) if lane is not None else waited,
            )
        return out

    def busy_on_lanes(self) -> dict[BackendProtocol, str]:
        """Members a lane runs a transaction on now, as "active" (their own state says
        idle: they sit parked while the lane lends them): for the stats snapshot."""
        return {
            server: "active"
            for state in self._keys.values()
            for server, tx in state.laned.items()
            if tx.busy
        }

    def harvest(self) -> None:
        """Add what the lanes counted to the totals (the stats snapshot calls it)."""
        for key, lane in self._lanes.items():
            self.totals.harvest(key, lane)
            waited = lane.take_waited()
            if waited:
                counters = self.totals.of(key)
                counters.wait_time += waited
                add_counts(counters.wait_hist, lane.take_waits()[1])

    def close_idle(self) -> int:
        """Close every idle server (SIGUSR1, pgpool-II's close_idle_connection)."""
        return self._close_idle_where(lambda server: True)

    def retire(self, which: Callable[[BackendProtocol], bool]) -> None:
        """Close every idle server for which ``which`` holds (failover: its node went down
        or changed role; the console's RECONNECT); lent ones close when released, being
        stale, and those a lane runs a transaction on go back from it to be closed."""
        for state in self._keys.values():
            for server, tx in state.laned.items():
                if tx.busy and which(server):
                    tx.retire()
        self._close_idle_where(which)

    def close_all(self) -> None:
        """A fast shutdown: close what is idle; what comes back closes; freed places go
        to no waiter (its client is being shut down) and min_pool_size opens nothing."""
        self.closing = True
        self.close_idle()
        for state in self._keys.values():
            self._lane_sync(state)  # what the lanes free comes back here, to be closed

    def _close_idle_where(self, which: Callable[[BackendProtocol], bool]) -> int:
        closed = 0
        for state in list(self._keys.values()):
            doomed = [server for server in state.idle if which(server)]
            for server in doomed:
                del state.idle[server]
            for server, tx, _ in self._lane_idle(state):
                if which(server):
                    self._from_lane(state, server, tx)
                    doomed.append(server)
            for server in doomed:
                self._close(server)
            closed += len(doomed)
            self._lane_sync(state)
            if doomed:
                self._offer_places(state)
        self._call_due()
        return closed
