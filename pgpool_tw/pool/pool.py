"""Idle server connections by key, client admission, life times, reset-and-return.

The pool decides, and only the pool decides, whether a server connection may
serve another client: it runs the reset queries, parks the connection idle
under its key, hands the most recently used one out again, and closes what is
too old, too used, failed its reset, or was never safe to share.  It also
admits client sessions (at most ``num_init_children`` at once, the rest wait in
arrival order, like pgpool-II's listen queue).  It never reads client bytes.

Mapping of pgpool-II's per-process settings to one process:

* ``num_init_children``: client sessions served at once.
* ``max_pool``: ``num_init_children * max_pool`` idle server connections are
  kept per backend node (a pgpool-II child's connection sets hold one per node);
  past that the node's least recently used is closed.
* ``child_life_time``: a pool key (user, database, startup options) that has had
  no client for this long loses its idle server connections.
* ``connection_life_time``: an idle server connection idle this long is closed.
* ``child_max_connections``: a server connection that has served this many
  client sessions is closed instead of pooled again.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Any, Callable, Optional, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pgpool_tw.config.settings import Config
from pgpool_tw.net.deadlines import Deadline, Deadlines
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.leases import Leases
from pgpool_tw.pool.reset import RESET_TIMEOUT, reset_batch
from pgpool_tw.stats.counters import Totals

log = Logger()

#: pgpool-II never caches connections to these databases.
UNPOOLED_DATABASES = frozenset({"template0", "template1", "postgres", "regression"})


Key = Hashable

_RESET_FAILED = "reset failed"
_RESET_TIMED_OUT = "reset timed out"
_WORTH_LOGGING = frozenset({_RESET_FAILED, _RESET_TIMED_OUT})


def expired(config: Config, now: float, idle_since: float, quiet_since: Optional[float]) -> str:
    """Why an idle server must close now, or "" when it may stay.

    connection_life_time counts from when the server went idle; child_life_time
    from when its pool key last had a client (``quiet_since`` None: one has it
    now).  One rule for the pool's idle servers and the warm lane's parked ones,
    each passing times of its own clock.
    """
    life = config.connection_life_time
    if life and now - idle_since >= life:
        return "connection_life_time"
    quiet = config.child_life_time
    if quiet and quiet_since is not None and now - quiet_since >= quiet:
        return "child_life_time"
    return ""


class Waiter(Protocol):
    """A client session as the pool's admission queue sees it."""

    def admitted(self) -> None: ...


class Lender(Protocol):
    """Who borrows parked servers and client slots: the C loop's warm lane (warm.py)."""

    @property
    def active(self) -> int: ...
    @property
    def parked(self) -> int: ...
    def lend(self, server: BackendProtocol) -> bool: ...
    def take(self, key: Key) -> Optional[BackendProtocol]: ...
    def sessions_changed(self, free_slots: int, waiting: int) -> None: ...
    def tick(self) -> None: ...
    def reclaim_all(self, why: str) -> int: ...


class Pool:
    """All server connections that are not attached to a client, and the client slots."""

    def __init__(self, config: Config, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self._idle: OrderedDict[BackendProtocol, None] = OrderedDict()
        #: How many of ``_idle`` each node has (max_pool caps each node).
        self._idle_by_node: dict[int, int] = {}
        self._by_key: dict[Key, list[BackendProtocol]] = {}
        self._resetting: dict[BackendProtocol, Deadline] = {}
        #: RESET_TIMEOUT for every reset under way, on one timer (see deadlines.py).
        self._reset_deadlines = Deadlines(clock, RESET_TIMEOUT)
        #: Sessions waiting for a resetting server, by that server.
        self._claims: dict[BackendProtocol, Callable[[Optional[BackendProtocol]], None]] = {}
        #: Admitted client sessions and the key each one uses.
        self.sessions: dict[Any, Key] = {}
        #: Clients waiting for a slot, in arrival order, with when they began to wait.
        self._waiting: deque[tuple[Waiter, Key, float]] = deque()
        self._key_sessions: dict[Key, int] = {}
        self._key_last_left: dict[Key, float] = {}
        #: Set by a shutdown: every server that comes back is closed, not reset.
        self.closing = False
        #: Borrows parked servers and logs clients in on them itself (warm.py), if any.
        self.lender: Optional[Lender] = None
        # Counters, read by tests and the stats snapshot.
        self.reused = 0
        self.discarded = 0
        #: Per pool key: the time admitted clients waited (``Counters.wait_time``).
        self.totals = Totals()
        #: Transaction pooling: its clients (max_client_conn bounds them), and the
        #: servers they borrow one transaction at a time (leases.py).
        self.transaction_sessions: dict[Any, Key] = {}
        self.leases = Leases(lambda: self.config, clock, self.totals)
        #: Per pool key: whether its last new server asked for a password (see
        #: ``asks_password``); bounded like the keys themselves.
        self._asked: dict[Key, bool] = {}
        #: Keys whose first login is finding that out, with the logins waiting for it.
        self._probes: dict[Key, list[Callable[[], None]]] = {}

    # -- client admission --------------------------------------------------------

    def admit(self, session: Waiter, key: Key) -> bool:
        """True when ``session`` may start now; otherwise it waits for ``admitted()``."""
        if self.free_slots() > 0:
            self.enter(session, key)
            return True
        self._waiting.append((session, key, self.clock.seconds()))
        self._tell_lender()
        return False

    def free_slots(self) -> int:
        """Client slots nobody holds: the one admission rule, for Python's logins and,
        handed down as a count (``Lender.sessions_changed``), for the warm lane's."""
        lender = self.lender
        taken = len(self.sessions) + (lender.active if lender is not None else 0)
        return self.config.num_init_children - taken

    def _tell_lender(self) -> None:
        if self.lender is not None:
            self.lender.sessions_changed(self.free_slots(), len(self._waiting))

    def admit_transaction(self, session: Any, key: Key) -> bool:
        """A transaction-mode client: in at once while fewer than max_client_conn are
        (its servers, not its slot, are what it may wait for); False: refused."""
        if len(self.transaction_sessions) >= self.config.max_client_conn:
            return False
        self.transaction_sessions[session] = key
        return True

    def withdraw(self, session: Any) -> None:
        """The session ended or gave up waiting; admit the next in line."""
        if self.transaction_sessions.pop(session, None) is not None:
            return
        key = self.sessions.pop(session, None)
        if key is None:
            self._waiting = deque(item for item in self._waiting if item[0] is not session)
            self._tell_lender()
            return
        left = self._key_sessions[key] - 1
        if left:
            self._key_sessions[key] = left
        else:
            del self._key_sessions[key]
            self._key_last_left[key] = self.clock.seconds()
        self._tell_lender()
        self.admit_waiting()

    def admit_waiting(self) -> None:
        """Let waiting clients in while there are free slots (after a leave or a reload)."""
        while self._waiting and self.free_slots() > 0:
            waiter, waiter_key, since = self._waiting.popleft()
            self.totals.of(waiter_key).waited(self.clock.seconds() - since)
            self.enter(waiter, waiter_key)
            # Not from inside another session's connectionLost.
            self.clock.callLater(0, waiter.admitted)

    def enter(self, session: Any, key: Key) -> None:
        """``session`` holds a client slot (admitted, or promoted from the warm lane)."""
        self.sessions[session] = key
        self._key_sessions[key] = self._key_sessions.get(key, 0) + 1
        self._tell_lender()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def waiting_by_key(self) -> dict[Key, tuple[int, float]]:
        """Per pool key: clients waiting for a slot, and the longest wait so far (seconds)."""
        now = self.clock.seconds()
        out: dict[Key, tuple[int, float]] = {}
        for _, key, since in self._waiting:
            count, longest = out.get(key, (0, 0.0))
            out[key] = (count + 1, max(longest, now - since))
        return out

    def asks_password(self, key: Key) -> Optional[bool]:
        """Whether a client of ``key`` the pooler did not check must prove itself to a new
        server before it takes a slot (True), or may take its slot and share the key's
        servers because PostgreSQL let the key's last login in without a password
        (False); None until a login of the key found out (``wait_for_probe``)."""
        return self._asked.get(key)

    def wait_for_probe(self, key: Key, then: Callable[[], None]) -> bool:
        """Another login of ``key`` is finding out whether it needs a password: ``then``
        is called when it did or gave up (True).  False: nobody is; the caller is the
        probe, and must end with ``learn_login`` or ``probe_ended``.  So a burst of
        first logins opens one server, not one each (trust needs only one)."""
        waiters = self._probes.get(key)
        if waiters is None:
            self._probes[key] = []
            return False
        waiters.append(then)
        return True

    def probe_ended(self, key: Key) -> None:
        """The probe of ``key`` learnt something or left: its waiters try again."""
        for then in self._probes.pop(key, None) or ():
            self.clock.callLater(0, then)

    def learn_login(self, key: Key, asked_password: bool) -> None:
        """A new server of ``key`` asked for a password, or logged in without."""
        if self._asked.get(key) != asked_password:
            if len(self._asked) >= 65536:
                self._asked.clear()  # a key churn: forget, and learn again
            self._asked[key] = asked_password
        if key in self._probes:
            self.probe_ended(key)

    # -- server connections ------------------------------------------------------

    def acquire(
        self,
        key: Key,
        got: Callable[[Optional[BackendProtocol]], None],
        verified: bool = False,
    ) -> None:
        """Hand ``got`` a server connection for ``key``, or None when a new one is needed.

        The most recently used idle one comes first; failing that, one whose reset
        is under way (a few hundred microseconds, against milliseconds for a new
        login), which is handed over the moment its reset succeeds.  A server that
        asked for a password at its login goes only to a ``verified`` client: one
        the pooler authenticated itself in this login, or let in by hba trust.
        """
        servers = self._by_key.get(key)
        if servers:
            for server in reversed(servers):
                if verified or not server.asked_password:
                    self._forget(server)
                    self.reused += 1
                    got(server)
                    return
        for server in self._resetting:
            if server.pool_key == key and server not in self._claims:
                if server.asked_password and not verified:
                    continue
                self._claims[server] = got
                return
        lent = self.lender.take(key) if self.lender is not None else None
        if lent is not None:
            self.reused += 1
        got(lent)

    def give_back(self, server: BackendProtocol, reusable: bool) -> None:
        """A session is over: reset the server for the next client, or close it.

        ``reusable`` is the session's word that both streams ended at a message
        boundary with nothing owed; the pool adds its own rules.
        """
        server.detach()
        if not server.connected_ok:
            return  # already gone (its connectionLost ran); nothing to reset or close
        why = self._why_not_pooled(server, reusable)
        if why:
            self._discard(server, why)
            return
        count, messages = reset_batch(self.config.reset_query_list, server.status)
        if not count:
            self._park(server)
            return
        server.keeper = self
        self._resetting[server] = self._reset_deadlines.start(self._reset_timed_out, server)
        server.run_batch(count, messages, self._reset_done)

    def _why_not_pooled(self, server: BackendProtocol, reusable: bool) -> str:
        config = self.config
        if self.closing:
            return "shutting down"
        if not reusable:
            return "session ended mid-message or mid-transaction"
        if server.stale:
            return "its node was detached or changed role"
        if not config.connection_cache:
            return "connection_cache is off"
        if server.asked_password and not config.enable_pool_hba:
            return "the server asked for a password (reuse needs enable_pool_hba)"
        if server.startup.database in UNPOOLED_DATABASES:
            return f"database {server.startup.database} is never pooled"
        limit = config.child_max_connections
        if limit and server.sessions >= limit:
            return "child_max_connections reached"
        return ""

    def _reset_done(self, server: BackendProtocol, ok: bool) -> None:
        server.was_reset()
        if not (ok and server.connected_ok):
            # _forget cancels the timer and gives a waiting claimant None.
            self._discard(server, _RESET_FAILED)
            return
        timer = self._resetting.pop(server, None)
        if timer is not None and timer.active():
            timer.cancel()
        claim = self._claims.pop(server, None)
        if claim is None:
            self._park(server)
        else:
            self.reused += 1
            claim(server)

    def _reset_timed_out(self, server: BackendProtocol) -> None:
        self._discard(server, _RESET_TIMED_OUT)

    def park(self, server: BackendProtocol) -> None:
        """``server`` was reset by someone else (the warm lane): pool it by the usual rules."""
        server.detach()
        if not server.connected_ok:
            return
        why = self._why_not_pooled(server, True)
        if why:
            self._discard(server, why)
        else:
            self._park(server)

    def discard(self, server: BackendProtocol, why: str) -> None:
        """Close ``server`` (the warm lane's verdict on one it gives back)."""
        server.detach()
        self._discard(server, why)

    def _park(self, server: BackendProtocol) -> None:
        if self.lender is not None and self.lender.lend(server):
            return
        server.park(self)
        self._idle[server] = None
        self._by_key.setdefault(server.pool_key, []).append(server)
        # pgpool-II's child keeps max_pool connection sets, one connection per backend
        # in each: the cap is per node, the least recently used of that node goes first.
        node = server.pool_key.node
        count = self._idle_by_node[node] = self._idle_by_node.get(node, 0) + 1
        limit = self.config.num_init_children * self.config.max_pool
        if count > limit:
            oldest = next(s for s in self._idle if s.pool_key.node == node)
            self._discard(oldest, "too many idle connections")

    def _forget(self, server: BackendProtocol) -> None:
        if self._idle.pop(server, 0) is None:
            self._idle_by_node[server.pool_key.node] -= 1
            servers = self._by_key.get(server.pool_key)
            if servers is not None:
                servers.remove(server)
                if not servers:
                    del self._by_key[server.pool_key]
        timer = self._resetting.pop(server, None)
        if timer is not None and timer.active():
            timer.cancel()
        claim = self._claims.pop(server, None)
        if claim is not None:
            claim(None)

    def _discard(self, server: BackendProtocol, why: str) -> None:
        self._forget(server)
        if server.connected_ok:
            self.discarded += 1
            if why in _WORTH_LOGGING:
                log.warn("server={server} closed: {why}", server=server.node.address, why=why)
            server.terminate()

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        """A pooled or resetting server went away."""
        self._forget(server)

    # -- time --------------------------------------------------------------------

    def tick(self) -> None:
        """Close idle servers past connection_life_time or child_life_time."""
        now = self.clock.seconds()
        for server in list(self._idle):
            key = server.pool_key
            quiet_since = (
                None
                if key in self._key_sessions
                else self._key_last_left.get(key, server.idle_since)
            )
            why = expired(self.config, now, server.idle_since, quiet_since)
            if why:
                self._discard(server, why)
        for gone in [k for k in self._key_last_left if k not in self._by_key]:
            del self._key_last_left[gone]
        self.leases.tick()
        if self.lender is not None:
            self.lender.tick()

    def close_idle(self) -> int:
        """Close every idle server connection (pgpool-II's close_idle_connection)."""
        servers = list(self._idle)
        for server in servers:
            self._discard(server, "asked to close idle connections")
        lent = self.lender.reclaim_all("asked to close idle connections") if self.lender else 0
        return len(servers) + lent + self.leases.close_idle()

    def retire(self, which: Callable[[BackendProtocol], bool]) -> None:
        """Close every idle or resetting server for which ``which`` holds (failover: its
        node went down or changed role), and every server parked in the warm lane."""
        for server in [s for s in list(self._idle) + list(self._resetting) if which(s)]:
            self._discard(server, "its node was detached or changed role")
        self.leases.retire(which)
        if self.lender is not None:
            self.lender.reclaim_all("a node was detached or changed role")

    def close_all(self) -> None:
        self.closing = True
        self.leases.closing = True
        self.close_idle()
        self.leases.close_all()
        for server in list(self._resetting):
            self._discard(server, "shutting down")

    def stop_timers(self) -> None:
        """The service stopped: leave no reset timer scheduled on the reactor."""
        self._reset_deadlines.close()
        self.leases.stop_timers()

    @property
    def idle_count(self) -> int:
        return len(self._idle) + (self.lender.parked if self.lender is not None else 0)
