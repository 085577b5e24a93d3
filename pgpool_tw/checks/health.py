"""pgpool-II's health check: log in to each node every health_check_period; a node that
fails health_check_max_retries + 1 tries in a row is handed to failover.

Owns: one timer per node (each node has its own period: health_check_periodN), the tries
(login.py's LoginAttempt as health_check_user to health_check_database, within
connect_timeout for the connection and health_check_timeout for the whole login; an empty
database tries ``postgres`` and then ``template1``, as pgpool-II does), the retries
(health_check_retry_delay apart), one log line per failed try and per verdict, and the
counters pgpool-II's SHOW POOL_HEALTH_CHECK_STATS shows.  A node that is down is skipped
(pgpool-II checks only nodes it uses); a node with period 0 is never checked.

Must never: detach a node itself (failover does, through ``on_failed``), run two tries of
one node at once, or log a password.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pgpool_tw.checks.login import LoginAttempt
from pgpool_tw.cluster.cluster import DOWN, Cluster
from pgpool_tw.config.health import HealthCheckSettings
from pgpool_tw.config.passwd import parse_secret
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.protocol.credentials import Secret

__all__ = ["HealthCheck", "HealthStats", "node_secret"]

log = Logger()

#: The databases an empty health_check_database tries, in order (pgpool-II's).
DEFAULT_DATABASES = ("postgres", "template1")


@dataclass
class HealthStats:
    """One node's health check counters (pgpool-II's SHOW POOL_HEALTH_CHECK_STATS)."""

    total_count: int = 0
    success_count: int = 0
    fail_count: int = 0
    skip_count: int = 0
    retry_count: int = 0
    max_retry_count: int = 0
    total_duration: float = 0.0
    max_duration: float = 0.0
    min_duration: float = 0.0
    last_health_check: float = 0.0
    last_successful_health_check: float = 0.0
    last_skip_health_check: float = 0.0
    last_failed_health_check: float = 0.0


def node_secret(
    password: str, user: str, secrets: Optional[Callable[[], Mapping[str, Secret]]]
) -> Optional[Secret]:
    """A check's password as a secret (md5 and TEXT forms read as in pool_passwd), or the
    user's pool_passwd entry when it is empty (pgpool-II's rule); None: no password."""
    if password:
        try:
            return parse_secret(password)
        except ValueError:
            return None
    entries = secrets() if secrets is not None else {}
    return entries.get(user)


class HealthCheck:
    """The health check of one service's nodes.

    ``config_getter`` and ``cluster_getter`` give the current settings and nodes (a reload
    swaps both); ``on_failed(index, why)`` is failover's request to detach a node.
    """

    def __init__(
        self,
        reactor: Any,
        config_getter: Callable[[], Config],
        cluster_getter: Callable[[], Cluster],
        on_failed: Callable[[int, str], Any],
        secrets: Optional[Callable[[], Mapping[str, Secret]]] = None,
        tls_for: Optional[Callable[[BackendNode], Optional[Any]]] = None,
        tls_required: bool = False,
    ) -> None:
        self.reactor = reactor
        self.config_getter = config_getter
        self.cluster_getter = cluster_getter
        self.on_failed = on_failed
        self.secrets = secrets
        self.tls_for = tls_for
        self.tls_required = tls_required
        #: Counters per node index (kept across reloads).
        self.stats: dict[int, HealthStats] = {}
        self._timers: dict[int, Any] = {}
        self._attempts: dict[int, LoginAttempt] = {}
        self._running = False
        #: The last failure logged per node (a node failing the same way is logged once).
        self._said: dict[int, str] = {}

    # -- the timers -----------------------------------------------------------------------

    def start(self) -> None:
        """Check every node with a period, each on its own timer (the first after one
        period, as pgpool-II's health check process starts its sleep first)."""
        self._running = True
        self.apply()

    def apply(self) -> None:
        """The settings or nodes changed: every node's timer follows its period now."""
        if not self._running:
            return
        config = self.config_getter()
        wanted = {
            node.index
            for node in self.cluster_getter()
            if config.health_check_for(node.index).period > 0
        }
        for index in list(self._timers):
            if index not in wanted:
                self._cancel(index)
        for index in wanted:
            if index not in self._timers and index not in self._attempts:
                self._schedule(index, config.health_check_for(index).period)

    def stop(self) -> None:
        self._running = False
        for index in list(self._timers):
            self._cancel(index)
        for attempt in list(self._attempts.values()):
            attempt.cancel()
        self._attempts.clear()

    def _cancel(self, index: int) -> None:
        timer = self._timers.pop(index, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _schedule(self, index: int, delay: float) -> None:
        self._cancel(index)
        self._timers[index] = self.reactor.callLater(delay, self._due, index)

    def _due(self, index: int) -> None:
        self._timers.pop(index, None)
        if not self._running:
            return
        cluster = self.cluster_getter()
        node = cluster.get(index)
        settings = self.config_getter().health_check_for(index)
        if node is None or settings.period <= 0:
            return
        stats = self.stats.setdefault(index, HealthStats())
        if node.status == DOWN:
            stats.skip_count += 1
            stats.last_skip_health_check = time.time()
            self._schedule(index, settings.period)
            return
        self.check(index).addCallback(self._checked, index)

    def _checked(self, why: Optional[str], index: int) -> None:
        if not self._running:
            return
        settings = self.config_getter().health_check_for(index)
        if settings.period > 0:
            self._schedule(index, settings.period)
        if why is not None:
            self.on_failed(index, f"health check failed: {why}")

    # -- one check: tries and retries -------------------------------------------------------

    def check(self, index: int) -> Deferred[Optional[str]]:
        """Check ``index`` now, with its retries; fires None when a try logged in, else why
        the last try failed."""
        result: Deferred[Optional[str]] = Deferred()
        settings = self.config_getter().health_check_for(index)
        stats = self.stats.setdefault(index, HealthStats())
        started = time.time()
        stats.total_count += 1
        stats.last_health_check = started
        retries = 0

        def tried(why: Optional[str]) -> None:
            nonlocal retries
            node = self.cluster_getter().get(index)
            if why is None:
                self._said.pop(index, None)
            if why is None or node is None or not self._running:
                self._note(stats, started, retries, why)
                result.callback(why)
                return
            if self._said.get(index) != why:  # one line per reason, not one per period
                self._said[index] = why
                log.warn(
                    "health check: node {index} ({address}) try {count} failed: {why}",
                    index=index,
                    address=node.address,
                    count=retries + 1,
                    why=why,
                )
            if retries >= settings.max_retries:
                self._note(stats, started, retries, why)
                result.callback(why)
                return
            retries += 1
            stats.retry_count += 1
            # Kept with the node's timers: a stop cancels a retry that waits.
            self._timers[index] = self.reactor.callLater(settings.retry_delay, retry)

        def retry() -> None:
            self._timers.pop(index, None)
            self._try(index, settings).addCallback(tried)

        self._try(index, settings).addCallback(tried)
        return result

    def _note(self, stats: HealthStats, started: float, retries: int, why: Optional[str]) -> None:
        now = time.time()
        duration = now - started
        stats.total_duration += duration
        stats.max_duration = max(stats.max_duration, duration)
        stats.min_duration = (
            duration if stats.min_duration == 0 else min(stats.min_duration, duration)
        )
        stats.max_retry_count = max(stats.max_retry_count, retries)
        if why is None:
            stats.success_count += 1
            stats.last_successful_health_check = now
        else:
            stats.fail_count += 1
            stats.last_failed_health_check = now

    def _try(self, index: int, settings: HealthCheckSettings) -> Deferred[Optional[str]]:
        """One try: log in (an empty database: postgres, then template1 if that one is
        missing)."""
        databases = (settings.database,) if settings.database else DEFAULT_DATABASES
        return self._login(index, settings, list(databases))

    def login(
        self, index: int, database: Optional[str] = None, timeout: Optional[float] = None
    ) -> Optional[LoginAttempt]:
        """One login to node ``index`` with its health check settings (``database`` and
        ``timeout`` in place of its own when given); None when the node is unknown.  The
        caller owns the attempt (failover's check of a node a session's failure points
        at uses it too)."""
        node = self.cluster_getter().get(index)
        if node is None:
            return None
        settings = self.config_getter().health_check_for(index)
        backend = node.backend
        return LoginAttempt(
            self.reactor,
            backend,
            settings.user,
            settings.database if database is None else database,
            lambda: node_secret(settings.password, settings.user, self.secrets),
            settings.connect_timeout,
            settings.timeout if timeout is None else timeout,
            self.tls_for(backend) if self.tls_for is not None else None,
            self.tls_required,
        )

    def _login(
        self, index: int, settings: HealthCheckSettings, databases: list[str]
    ) -> Deferred[Optional[str]]:
        result: Deferred[Optional[str]] = Deferred()
        attempt = self.login(index, databases[0], settings.timeout) if self._running else None
        if attempt is None:
            result.callback("the node is no longer configured")
            return result
        self._attempts[index] = attempt

        def done(why: Optional[str]) -> None:
            self._attempts.pop(index, None)
            if why is not None and attempt.sqlstate == "3D000" and len(databases) > 1:
                self._login(index, settings, databases[1:]).chainDeferred(result)
                return
            result.callback(why)

        attempt.done.addCallback(done)
        return result
