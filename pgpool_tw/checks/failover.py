"""Failover, failback and follow-primary: what happens when a node goes down or comes back.

pgpool-II's sequence, one request at a time (requests queue, as pgpool-II's failover
requests do):

- **Detach** (a health check gave up, a session's server failed and a login to the node
  failed too, detach_false_primary, or an operator): a node flagged DISALLOW_TO_FAILOVER
  is refused with a log line, and so is the last node up unless an operator asks
  (pgpool-tw's choice: with nothing to fail over to, a node that comes back serves clients
  again by itself, where pgpool-II would refuse every client until someone attaches it).
  Otherwise its status becomes ``down`` (pgpool_status is written), the sessions and
  pooled servers on it end (``NodeEffects.node_detached``), and ``failover_command`` runs
  with the % escapes (``%m`` is the new main node: the lowest-numbered node not down). If
  it was the primary, the new one is searched for every second for
  search_primary_node_timeout seconds (0: for ever) by rounds of the replication check:
  PostgreSQL says who is primary, nobody else. Once found, with ``follow_primary_command``
  set, every other node not down is detached and the command runs for each (in the
  background, as pgpool-II forks it: the script may attach nodes itself).
- **Attach** (failback: an operator, or auto_failback): ``waiting``, ``failback_command``,
  one round of the replication check for its role.
- **Promote**: ``switchover`` detaches the primary and runs ``failover_command`` with the
  given node as the new main node (the script promotes it); otherwise the node is taken as
  primary at once (the operator promoted it; the next round of checks confirms) and
  follow-primary runs.
- **A session's server failed** (failover_on_backend_error, failover_on_backend_shutdown):
  pgpool-tw asks the node for a login first and detaches it only when the node does not
  answer or answers that it is shutting down (57P0x), so a backend ended by
  pg_terminate_backend or idle_session_timeout never fails a healthy node over.

Must never: run two requests at once, block the reactor on a command, let a command's value
reach the shell unquoted (config/escapes.py), or detach a node the user flagged
DISALLOW_TO_FAILOVER.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from pgpool_tw.checks.command import run_command
from pgpool_tw.checks.login import LoginAttempt
from pgpool_tw.checks.sr_check import SrCheck
from pgpool_tw.checks.status_file import write_status
from pgpool_tw.cluster.cluster import DOWN, Cluster, Node
from pgpool_tw.cluster.topology import STREAMING_REPLICATION, Decision, Probe
from pgpool_tw.config.escapes import CommandValues, EscapeError, expand
from pgpool_tw.config.settings import Config

__all__ = ["Failover", "NodeEffects"]

log = Logger()

#: How often the search for a new primary asks the nodes (pgpool-II: every second).
SEARCH_INTERVAL = 1.0
#: How often the last node up, failing, is logged as kept (seconds).
LAST_NODE_LOG = 60.0
#: No round has been seen yet (None is a round that found no primary).
_UNSEEN = -2


class NodeEffects(Protocol):
    """What a node's change does to sessions and pooled servers (session/context.py)."""

    def node_detached(self, index: int, why: str) -> None: ...
    def roles_changed(self, changed: frozenset[int]) -> None: ...
    def routing_changed(self) -> None: ...


class Failover:
    """Node status changes for one service, one at a time."""

    def __init__(
        self,
        reactor: Any,
        config_getter: Callable[[], Config],
        cluster_getter: Callable[[], Cluster],
        effects: NodeEffects,
        sr_check_getter: Callable[[], Optional[SrCheck]],
        status_path: Optional[str] = None,
        login: Optional[Callable[[int, str, float], Optional[LoginAttempt]]] = None,
    ) -> None:
        """``login(index, database, timeout)``: one login to a node as its health check
        logs in (health.py's ``HealthCheck.login``), for backend_error's check."""
        self.reactor = reactor
        self.config_getter = config_getter
        self.cluster_getter = cluster_getter
        self.effects = effects
        self.sr_check_getter = sr_check_getter
        self.status_path = status_path
        self.login = login
        self._queue: list[tuple[Callable[[], Deferred[bool]], Deferred[bool]]] = []
        self._busy = False
        #: The logins that check a node a session's failure points at.
        self._verifying: dict[int, LoginAttempt] = {}
        self._last_failback: dict[int, float] = {}
        self._stopped = False
        self._status_warned = False
        #: The primary the last round found, to notice one that changed between rounds.
        self._seen_primary: Optional[int] = _UNSEEN
        #: When a failing last node up was last logged as kept.
        self._kept: dict[int, float] = {}

    # -- requests ---------------------------------------------------------------------------

    def detach(self, index: int, why: str, automatic: bool = False) -> Deferred[bool]:
        """Detach node ``index``; fires True when it was detached, False when it was not
        (unknown, already down, flagged).  ``automatic`` (a failed health check, a failed
        session, a false primary) never detaches the last node up: with nothing to fail
        over to, clients are better served by the node coming back on its own than by a
        pooler that refuses everyone until an operator attaches it."""
        return self._enqueue(lambda: self._detach(index, why, automatic=automatic))

    def attach(self, index: int, why: str = "attached by request") -> Deferred[bool]:
        """Attach node ``index`` again (pcp_attach_node, auto_failback)."""
        return self._enqueue(lambda: self._attach(index, why))

    def promote(self, index: int, switchover: bool = False) -> Deferred[bool]:
        """Make node ``index`` the primary (pcp_promote_node; ``switchover``: its -s)."""
        return self._enqueue(lambda: self._promote(index, switchover))

    def start(self) -> None:
        """The service (re)starts: requests are taken again."""
        self._stopped = False

    def stop(self) -> None:
        """The service stops: queued requests are dropped (their Deferreds fire False)."""
        self._stopped = True
        for attempt in list(self._verifying.values()):
            attempt.cancel()
        queue, self._queue = self._queue, []
        for _, result in queue:
            result.callback(False)

    def backend_error(self, index: int, why: str) -> None:
        """A session's server of node ``index`` failed: with failover_on_backend_error (or
        _shutdown), detach the node if a login to it fails too."""
        config = self.config_getter()
        if not (config.failover_on_backend_error or config.failover_on_backend_shutdown):
            return
        node = self.cluster_getter().get(index)
        if node is None or node.status == DOWN or index in self._verifying or self._stopped:
            return
        if self.login is None:
            return
        settings = config.health_check_for(index)
        timeout = settings.timeout if settings.timeout > 0 else 10.0
        attempt = self.login(index, settings.database or "postgres", timeout)
        if attempt is None:
            return
        self._verifying[index] = attempt

        def verified(answer: Optional[str]) -> None:
            self._verifying.pop(index, None)
            if self._stopped:
                return
            # The postmaster answered a login, even to refuse it (a wrong password, no such
            # user): the node is up, the session's server alone failed.
            alive = answer is None or (attempt.sqlstate and not attempt.sqlstate.startswith("57P"))
            if alive:
                log.info(
                    "failover: node {index}: a session's server failed ({why}) but the node "
                    "answers a login: not detached",
                    index=index,
                    why=why,
                )
                return
            self.detach(
                index,
                f"a session's server failed ({why}) and a login failed: {answer}",
                automatic=True,
            )

        attempt.done.addCallback(verified)

    def on_round(self, decision: Decision, probes: Mapping[int, Probe]) -> None:
        """After each replication check round: a primary that changed outside failover
        (an operator's switchover) ends the sessions writing elsewhere; then
        detach_false_primary and auto_failback."""
        found = self.cluster_getter().detected_primary
        primary = found.index if found is not None else None
        seen, self._seen_primary = self._seen_primary, primary
        if seen != _UNSEEN and primary is not None and seen != primary and not self._busy:
            self.effects.roles_changed(frozenset(i for i in (seen, primary) if i is not None))
        config = self.config_getter()
        if config.detach_false_primary and decision.primary is not None:
            for index in decision.false_primaries:
                self.detach(
                    index, "false primary (not in recovery, not the primary)", automatic=True
                )
        if not config.auto_failback or decision.primary is None:
            return
        head = probes.get(decision.primary)
        if head is None:
            return
        streaming = {row.application_name for row in head.replication if row.state == "streaming"}
        now = self.reactor.seconds()
        for node in self.cluster_getter():
            name = node.backend.application_name
            if node.status != DOWN or not name or name not in streaming:
                continue
            last = self._last_failback.get(node.index)
            if last is not None and now - last < config.auto_failback_interval:
                continue
            self._last_failback[node.index] = now
            self.attach(node.index, "auto_failback: it streams from the primary")

    # -- the queue ----------------------------------------------------------------------------

    def _enqueue(self, work: Callable[[], Deferred[bool]]) -> Deferred[bool]:
        result: Deferred[bool] = Deferred()
        if self._stopped:
            result.callback(False)
            return result
        self._queue.append((work, result))
        if not self._busy:
            self._next()
        return result

    def _next(self) -> None:
        if not self._queue:
            self._busy = False
            return
        self._busy = True
        work, result = self._queue.pop(0)

        def done(outcome: Any) -> None:
            ok = outcome is True
            if not isinstance(outcome, bool):
                log.failure("failover request failed", outcome)
            result.callback(ok)
            self._next()

        try:
            running = work()
        except Exception:
            log.failure("failover request failed")
            running = succeed(False)
        running.addBoth(done)

    # -- detach -----------------------------------------------------------------------------

    def _detach(
        self, index: int, why: str, new_main: Optional[int] = None, automatic: bool = False
    ) -> Deferred[bool]:
        cluster = self.cluster_getter()
        node = cluster.get(index)
        if node is None or node.status == DOWN:
            return succeed(False)
        if automatic and all(n.status == DOWN for n in cluster if n.index != index):
            now = self.reactor.seconds()
            if now - self._kept.get(index, -LAST_NODE_LOG) >= LAST_NODE_LOG:
                self._kept[index] = now
                log.warn(
                    "failover: node {index} ({address}) failed ({why}); not detached: it is "
                    "the last node up (clients get connection errors until it answers)",
                    index=index,
                    address=node.address,
                    why=why,
                )
            return succeed(False)
        if not node.backend.allow_to_failover:
            log.warn(
                "failover: node {index} ({address}) not detached: backend_flag{index} is "
                "DISALLOW_TO_FAILOVER ({why})",
                index=index,
                address=node.address,
                why=why,
            )
            return succeed(False)
        old_primary, old_main = cluster.detected_primary, cluster.main
        roles = _roles(cluster)
        cluster.detach(index)
        log.warn(
            "failover: node {index} ({address}) detached: {why}",
            index=index,
            address=node.address,
            why=why,
        )
        self.save_status()
        self.effects.node_detached(index, why)
        main = cluster.get(new_main) if new_main is not None else cluster.main
        values = _values(node, main, old_main, old_primary)
        ran = self._run("failover_command", self.config_getter().failover_command, values)
        was_primary = old_primary is not None and old_primary.index == index
        searching = was_primary and cluster.clustering_mode == STREAMING_REPLICATION
        if not searching or cluster.main is None:  # no node left to become primary
            ran.addCallback(lambda _: self._settled(roles))
            return ran.addCallback(lambda _: True)
        ran.addCallback(lambda _: self._search_primary())
        ran.addCallback(lambda found: self._follow(found, old_main, old_primary))
        ran.addCallback(lambda _: self._settled(roles))
        return ran.addCallback(lambda _: True)

    def _settled(self, before: dict[int, str]) -> None:
        """Tell sessions which nodes' roles changed in this request."""
        after = _roles(self.cluster_getter())
        changed = frozenset(index for index, role in after.items() if before.get(index) != role)
        if changed:
            self.effects.roles_changed(changed)
        else:
            self.effects.routing_changed()

    def _search_primary(self) -> Deferred[Optional[Node]]:
        """Rounds of the replication check, one a second, until a node is primary or
        search_primary_node_timeout passes (0: no limit)."""
        result: Deferred[Optional[Node]] = Deferred()
        limit = self.config_getter().search_primary_node_timeout
        deadline = self.reactor.seconds() + limit if limit > 0 else None

        def round_over(_: Any = None) -> None:
            if self._stopped:
                result.callback(None)
                return
            found = self.cluster_getter().detected_primary
            if found is not None:
                log.info(
                    "failover: node {index} ({address}) is the primary",
                    index=found.index,
                    address=found.address,
                )
                result.callback(found)
                return
            if deadline is not None and self.reactor.seconds() >= deadline:
                log.warn(
                    "failover: no primary found within search_primary_node_timeout ({limit:g}s); "
                    "writes go to the main node and fail there until a check finds one",
                    limit=limit,
                )
                result.callback(None)
                return
            self.reactor.callLater(SEARCH_INTERVAL, ask)

        def ask() -> None:
            check = self.sr_check_getter()
            if check is None:
                log.warn(
                    "failover: sr_check_user is not set: the new primary cannot be searched "
                    "for; writes go to the main node"
                )
                result.callback(None)
                return
            check.check_now().addBoth(round_over)

        ask()
        return result

    def _follow(
        self, found: Optional[Node], old_main: Optional[Node], old_primary: Optional[Node]
    ) -> None:
        """follow_primary_command: every other node not down is detached, then the command
        runs for each, one after the other, outside the queue (the script may attach)."""
        command = self.config_getter().follow_primary_command
        if found is None or not command:
            return
        cluster = self.cluster_getter()
        followers = [n for n in cluster if n.status != DOWN and n.index != found.index]
        for node in followers:
            cluster.detach(node.index)
            log.info(
                "failover: node {index} ({address}) detached to follow the new primary node "
                "{primary}",
                index=node.index,
                address=node.address,
                primary=found.index,
            )
            self.effects.node_detached(node.index, f"following the new primary node {found.index}")
        if not followers:
            return
        self.save_status()
        chain: Deferred[Any] = succeed(None)
        for node in followers:
            values = _values(node, found, old_main, old_primary)
            chain.addCallback(self._run_after, "follow_primary_command", command, values)

    def _run_after(self, _: Any, what: str, template: str, values: CommandValues) -> Deferred[Any]:
        return self._run(what, template, values)

    # -- attach and promote ------------------------------------------------------------------

    def _attach(self, index: int, why: str) -> Deferred[bool]:
        cluster = self.cluster_getter()
        node = cluster.get(index)
        if node is None or node.status != DOWN:
            return succeed(False)
        old_primary, old_main = cluster.detected_primary, cluster.main
        roles = _roles(cluster)
        cluster.attach(index)
        log.info(
            "failback: node {index} ({address}) attached: {why}",
            index=index,
            address=node.address,
            why=why,
        )
        self.save_status()
        values = _values(node, cluster.main, old_main, old_primary)
        ran = self._run("failback_command", self.config_getter().failback_command, values)

        def check_role(_: Any) -> Deferred[Any]:
            check = self.sr_check_getter()
            if check is None or self._stopped:
                return succeed(None)
            return check.check_now().addErrback(lambda _: None)

        ran.addCallback(check_role)
        ran.addCallback(lambda _: self._settled(roles))
        return ran.addCallback(lambda _: True)

    def _promote(self, index: int, switchover: bool) -> Deferred[bool]:
        cluster = self.cluster_getter()
        node = cluster.get(index)
        if node is None or node.status == DOWN:
            return succeed(False)
        primary = cluster.detected_primary
        if primary is not None and primary.index == index:
            return succeed(False)
        if switchover and primary is not None:
            return self._detach(primary.index, f"switchover to node {index}", new_main=index)
        old_main = cluster.main
        roles = _roles(cluster)
        cluster.set_primary(index)
        log.info(
            "failover: node {index} ({address}) promoted to primary by request",
            index=index,
            address=node.address,
        )
        self._follow(cluster.get(index), old_main, primary)
        self._settled(roles)
        return succeed(True)

    # -- helpers ------------------------------------------------------------------------------

    def _run(self, what: str, template: str, values: CommandValues) -> Deferred[Any]:
        if not template or self._stopped:
            return succeed(None)
        try:
            command = expand(template, values)
        except EscapeError as e:
            log.error("{what} not run: {why}", what=what, why=str(e))
            return succeed(None)
        log.info("{what}: running for node {node}", what=what, node=values.node_id)
        return run_command(self.reactor, command, what)

    def save_status(self) -> None:
        """pgpool_status follows every status change (one warning if it cannot)."""
        if self.status_path is None:
            return
        cluster = self.cluster_getter()
        why = write_status(self.status_path, dict(cluster.statuses()))
        if why is not None and not self._status_warned:
            self._status_warned = True
            log.warn("{why}", why=why)


def _roles(cluster: Cluster) -> dict[int, str]:
    return {node.index: node.role for node in cluster}


def _values(
    node: Node, main: Optional[Node], old_main: Optional[Node], old_primary: Optional[Node]
) -> CommandValues:
    """The % escapes' values for a command about ``node`` (-1 and '' where a node is none)."""
    return CommandValues(
        node_id=node.index,
        host=node.backend.hostname,
        port=node.backend.port,
        data_directory=node.backend.data_directory,
        new_main_id=main.index if main is not None else -1,
        new_main_host=main.backend.hostname if main is not None else "",
        new_main_port=main.backend.port if main is not None else None,
        new_main_data_directory=main.backend.data_directory if main is not None else "",
        old_main_id=old_main.index if old_main is not None else -1,
        old_primary_id=old_primary.index if old_primary is not None else -1,
        old_primary_host=old_primary.backend.hostname if old_primary is not None else "",
        old_primary_port=old_primary.backend.port if old_primary is not None else None,
    )
