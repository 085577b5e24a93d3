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
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any, Callable, NamedTuple, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pgpool_tw.config.settings import Config
from pgpool_tw.net.deadlines import Deadline, Deadlines
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.reset import RESET_TIMEOUT, reset_batch
from pgpool_tw.stats.counters import Totals

#: A pool key (pool/key.py's ``PoolKey``, or anything hashable in tests).
Key = Hashable

log = Logger()

Got = Callable[[Optional[BackendProtocol]], None]


class LeaseStats(NamedTuple):
    """One pool key as the stats snapshot sees it (PgBouncer's SHOW POOLS, in part)."""

    active: int  # members lent to a client now
    idle: int
    opening: int  # places handed out for servers not yet opened
    waiting: int
    max_wait: float  # seconds the longest-waiting client has waited


class Ticket:
    """A client waiting for a server of ``key``: what ``withdraw`` takes back."""

    __slots__ = ("key", "got", "expired", "verified", "since", "waiting")

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


class _Key:
    """One pool key's members, places and queue."""

    __slots__ = ("idle", "lent", "opening", "waiters", "used")

    def __init__(self) -> None:
        #: Parked members, least recently used first (dict: ordered, O(1) removal).
        self.idle: dict[BackendProtocol, None] = {}
        self.lent: set[BackendProtocol] = set()
        self.opening = 0
        self.waiters: OrderedDict[Ticket, None] = OrderedDict()
        #: A client has leased here: min_pool_size keeps servers open for it from now on.
        self.used = False

    @property
    def count(self) -> int:
        return len(self.idle) + len(self.lent) + self.opening


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
        self._keys: dict[Key, _Key] = {}
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
        return state

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
        state.waiters[ticket] = None
        self._offer_places(state)  # places a reload made, to the queue in its order
        self._call_due()
        return ticket if ticket.waiting else None

    def _take_idle(self, state: _Key, verified: bool) -> Optional[BackendProtocol]:
        """The most recently used idle server this client may use; stale ones met on the
        way (their node failed over since they parked) are closed."""
        idle = state.idle
        if not idle:
            return None
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

    def withdraw(self, ticket: Ticket) -> None:
        """A waiting client left (it closed, or was cancelled) before it got a server."""
        if not ticket.waiting:
            return
        ticket.waiting = False
        state = self._keys.get(ticket.key)
        if state is not None:
            state.waiters.pop(ticket, None)

    def opened(self, server: BackendProtocol) -> None:
        """The place ``got(None)`` or the opener counted is ``server``'s now: a lent member
        (until ``release``, or ``forget`` if it closes first)."""
        state = self._state(server.pool_key)
        if state.opening:
            state.opening -= 1
        else:
            log.warn("server={server} opened without a place counted", server=server)
        state.lent.add(server)

    def open_failed(self, key: Key) -> None:
        """The server a place was counted for never opened: the place goes to the next waiter."""
        state = self._keys.get(key)
        if state is None or not state.opening:
            return
        state.opening -= 1
        self._offer_places(state)
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
            self._call_due()
            return
        waiters = state.waiters
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

    def _served(self, ticket: Ticket, server: Optional[BackendProtocol]) -> None:
        """``ticket`` is out of its queue and its server or place counted: tell it, last."""
        ticket.waiting = False
        self.totals.of(ticket.key).wait_time += self.clock.seconds() - ticket.since
        self._due.append((ticket.got, (server,)))

    def _offer_places(self, state: _Key) -> None:
        """Hand free places to the queue in arrival order: each served waiter opens one."""
        if self.closing or not state.waiters:
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
        else:
            return
        self._offer_places(state)
        self._call_due()

    def _close(self, server: BackendProtocol) -> None:
        """Close a server already out of every structure (terminate unwatches it first)."""
        if server.connected_ok:
            server.terminate()

    def is_member(self, server: BackendProtocol) -> bool:
        state = self._keys.get(server.pool_key)
        return state is not None and (server in state.lent or server in state.idle)

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
            if not state.count and not state.waiters and not (state.used and config.min_pool_size):
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
            out[key] = LeaseStats(
                len(state.lent),
                len(state.idle),
                state.opening,
                len(state.waiters),
                now - first.since if first is not None else 0.0,
            )
        return out

    def close_idle(self) -> int:
        """Close every idle server (SIGUSR1, pgpool-II's close_idle_connection)."""
        return self._close_idle_where(lambda server: True)

    def retire(self, which: Callable[[BackendProtocol], bool]) -> None:
        """Close every idle server for which ``which`` holds (failover: its node went down
        or changed role); lent ones close when released, being stale."""
        self._close_idle_where(which)

    def close_all(self) -> None:
        """A fast shutdown: close what is idle; what comes back closes; freed places go
        to no waiter (its client is being shut down) and min_pool_size opens nothing."""
        self.closing = True
        self.close_idle()

    def _close_idle_where(self, which: Callable[[BackendProtocol], bool]) -> int:
        closed = 0
        for state in list(self._keys.values()):
            doomed = [server for server in state.idle if which(server)]
            for server in doomed:
                del state.idle[server]
            for server in doomed:
                self._close(server)
            closed += len(doomed)
            if doomed:
                self._offer_places(state)
        self._call_due()
        return closed
