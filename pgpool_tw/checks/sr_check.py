"""The streaming replication check: ask every node who it is, at start and every
sr_check_period, and hand one round at a time to cluster/topology.py.

Owns: rounds, on a timer and never overlapping; per round, through probe.py, one
connection to each node as sr_check_user to sr_check_database (opened at the start of the
round and closed at its end, as pgpool-II's worker does with its "persistent" connections),
logging in with sr_check_password or, when that is empty, the user's pool_passwd entry
(pgpool-II's rule); asking ``pg_is_in_recovery()`` with the LSNs and replay timestamp in one
statement, a node not in recovery its pg_stat_replication, and the primary the names of the
functions that are never VOLATILE (the SQL classifier's read-only list); applying the verdict
to the cluster; logging one line per change.

Must never: let a round overlap the previous one, wait on a node longer than the round's
timeout (sr_check_period, or 10 s when the period is 0), log a password, or keep a
connection past its round.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgpool_tw.checks.probe import NodeProbe
from pgpool_tw.cluster.cluster import DOWN, Cluster
from pgpool_tw.cluster.topology import (
    NO_THRESHOLDS,
    STREAMING_REPLICATION,
    Decision,
    Probe,
    Thresholds,
    decide,
)
from pgpool_tw.config.passwd import parse_secret
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.protocol.credentials import Secret

__all__ = ["DEFAULT_TIMEOUT", "SrCheck"]

log = Logger()

DEFAULT_TIMEOUT = 10.0


class SrCheck:
    """pgpool-II's streaming replication check for one service.

    ``cluster_getter`` returns the cluster to read nodes from and apply verdicts to (the
    session context's, which a reload replaces).  ``secrets`` returns pool_passwd's entries
    (for an empty sr_check_password).  ``tls_for(node)`` gives the client-side TLS creator
    for a node, or None for plaintext (the service passes its TLSContexts.for_server).
    """

    def __init__(
        self,
        reactor: Any,
        cluster_getter: Callable[[], Cluster],
        user: str = "nobody",
        password: str = "",
        database: str = "postgres",
        period: float = 10.0,
        mode: str = STREAMING_REPLICATION,
        thresholds: Thresholds = NO_THRESHOLDS,
        log_standby_delay: str = "if_over_threshold",
        secrets: Optional[Callable[[], Mapping[str, Secret]]] = None,
        on_functions: Optional[Callable[[frozenset[str]], None]] = None,
        on_applied: Optional[Callable[[], None]] = None,
        on_round: Optional[Callable[[Decision, Mapping[int, Probe]], None]] = None,
        tls_for: Optional[Callable[[BackendNode], Optional[Any]]] = None,
        tls_required: bool = False,
    ) -> None:
        self.reactor = reactor
        self.cluster_getter = cluster_getter
        self.user = user
        self.password = password
        self.database = database
        self.period = period
        self.mode = mode
        self.thresholds = thresholds
        self.log_standby_delay = log_standby_delay
        self.secrets = secrets
        self.on_functions = on_functions
        #: Called after each round's answers reached the cluster (routed sessions re-read
        #: which nodes they may read from).
        self.on_applied = on_applied
        #: Called with each round's verdict and answers once applied (failover reads the
        #: false primaries and which detached standbys stream again: auto_failback).
        self.on_round = on_round
        self._seen: Mapping[int, Probe] = {}
        self.tls_for = tls_for
        self.tls_required = tls_required
        #: Names of functions no overload of which is VOLATILE, from the last primary asked.
        self.read_only_functions: frozenset[str] = frozenset()
        #: The last round's verdict (None before the first).
        self.last: Optional[Decision] = None
        self._running: Optional[Deferred[Decision]] = None
        self._waiters: list[Deferred[Decision]] = []
        self._probes: list[NodeProbe] = []
        self._next: Any = None
        self._looping = False
        self._stopped = False
        self._why: dict[int, str] = {}
        self._secret_warned = False

    @classmethod
    def from_config(
        cls, reactor: Any, cluster_getter: Callable[[], Cluster], config: Config, **kwargs: Any
    ) -> SrCheck:
        """An SrCheck with the pgpool-II settings of ``config``."""
        return cls(
            reactor,
            cluster_getter,
            user=config.sr_check_user,
            password=config.sr_check_password,
            database=config.sr_check_database,
            period=config.sr_check_period,
            mode=config.clustering_mode,
            thresholds=Thresholds(config.delay_threshold, config.delay_threshold_by_time),
            log_standby_delay=config.log_standby_delay,
            **kwargs,
        )

    @property
    def timeout(self) -> float:
        """How long a node may take to answer: the period, or 10 s when there is none."""
        return self.period if self.period > 0 else DEFAULT_TIMEOUT

    def secret(self) -> Optional[Secret]:
        """sr_check_password as a secret (md5 and TEXT forms read as in pool_passwd), or the
        user's pool_passwd entry when it is empty."""
        if self.password:
            try:
                return parse_secret(self.password)
            except ValueError as e:
                if not self._secret_warned:
                    self._secret_warned = True
                    log.warn("sr_check_password cannot be used: {why}", why=str(e))
                return None
        entries = self.secrets() if self.secrets is not None else {}
        return entries.get(self.user)

    # -- running ------------------------------------------------------------------------

    def start(self) -> Deferred[Decision]:
        """Check now, then every sr_check_period after each round ends (0: only now)."""
        self._looping = True
        self._stopped = False
        return self.check_now()

    def stop(self) -> None:
        """No more rounds; a round in flight ends now, its connections closed, its verdict
        not applied."""
        self._stopped = True
        self._looping = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        for probe in list(self._probes):
            probe.fail("the check stopped")

    def check_now(self) -> Deferred[Decision]:
        """Run one round (after the one in flight, if any: rounds never overlap); the
        Deferred fires with its verdict once the cluster has it."""
        waiter: Deferred[Decision] = Deferred()
        if self._running is not None:
            self._waiters.append(waiter)
            return waiter
        if self._next is not None and self._next.active():
            self._next.cancel()
            self._next = None
        self._stopped = False
        self._round().chainDeferred(waiter)
        return waiter

    def _round(self) -> Deferred[Decision]:
        cluster = self.cluster_getter()
        # A detached node is failover's: it is not asked, and cannot claim to be primary.
        backends = [node.backend for node in cluster if node.status != DOWN]
        timeout = self.timeout
        self._probes = [NodeProbe(self, backend, timeout) for backend in backends]
        probes = list(self._probes)
        for probe in probes:
            probe.start()
        running: Deferred[Decision] = Deferred()
        self._running = running
        answers: Deferred[Any] = gatherResults([probe.done for probe in probes])
        answers.addCallback(self._answered, probes, backends)
        answers.addBoth(self._round_over, probes)
        answers.chainDeferred(running)
        return running

    def _answered(
        self,
        answers: list[tuple[Probe, Optional[str]]],
        probes: list[NodeProbe],
        backends: list[BackendNode],
    ) -> Deferred[Decision]:
        seen = self._seen = {backend.index: answer[0] for backend, answer in zip(backends, answers)}
        decision = decide(backends, seen, self.mode, self.thresholds)
        for backend, (_, why) in zip(backends, answers):
            self._note_failure(backend, why)
        primary = next((p for p in probes if p.backend.index == decision.primary), None)
        if primary is None or self._stopped:
            finished: Deferred[Optional[frozenset[str]]] = Deferred()
            finished.callback(None)
        else:
            finished = primary.functions()
        applied: Deferred[Any] = finished
        applied.addCallback(self._functions_known)
        applied.addCallback(lambda _: self._apply(decision))
        return applied

    def _functions_known(self, names: Optional[frozenset[str]]) -> None:
        if names is None or names == self.read_only_functions:
            return
        self.read_only_functions = names
        if self.on_functions is not None:
            self.on_functions(names)

    def _apply(self, decision: Decision) -> Decision:
        self.last = decision
        if self._stopped:
            return decision
        cluster = self.cluster_getter()
        for line in cluster.apply(decision, time.time()):
            log.info("sr_check: {line}", line=line)
        self._log_delays(cluster)
        if self.on_applied is not None:
            self.on_applied()
        if self.on_round is not None:
            self.on_round(decision, self._seen)
        return decision

    def _round_over(self, result: Any, probes: list[NodeProbe]) -> Any:
        for probe in probes:
            probe.close()
        self._running = None
        waiters, self._waiters = self._waiters, []
        if waiters and not self._stopped:
            self._round().addBoth(_fire_all, waiters)
            return result
        elif waiters:
            _fire_all(result, waiters)
        elif self._looping and not self._stopped and self.period > 0:
            self._next = self.reactor.callLater(self.period, self._tick)
        return result

    def _tick(self) -> None:
        self._next = None
        if self._running is None and not self._stopped:
            self._round().addErrback(lambda failure: log.failure("sr_check round failed", failure))

    # -- logging --------------------------------------------------------------------------

    def _note_failure(self, backend: BackendNode, why: Optional[str]) -> None:
        """One line when a node's reason for not answering changes, not one per round."""
        index = backend.index
        if why is None:
            self._why.pop(index, None)
            return
        if self._why.get(index) != why and not self._stopped:
            log.warn(
                "sr_check: node {index} ({address}) did not answer: {why}",
                index=index,
                address=backend.address,
                why=why,
            )
        self._why[index] = why

    def _log_delays(self, cluster: Cluster) -> None:
        """log_standby_delay, as pgpool-II: every round while a standby is behind
        (``always``) or over its threshold (``if_over_threshold``)."""
        if self.log_standby_delay == "none":
            return
        primary = cluster.primary
        for node in cluster.standbys:
            by_time = self.thresholds.delay_threshold_by_time > 0
            delay = node.delay_seconds if by_time else node.delay_bytes
            if not delay or primary is None:
                continue
            if self.log_standby_delay == "always" or node.lagging:
                unit = "second(s)" if by_time else "bytes"
                log.info(
                    "Replication of node {index} is behind {delay} {unit} from the primary "
                    "server (node {primary})",
                    index=node.index,
                    delay=delay,
                    unit=unit,
                    primary=primary.index,
                )


def _fire_all(result: Any, waiters: list[Deferred[Decision]]) -> Any:
    """Hand one round's outcome to every check_now() that waited for it."""
    for waiter in waiters:
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
    return None
