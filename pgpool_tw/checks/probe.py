"""One node's share of one round of the streaming replication check (sr_check.py).

Owns: the connection to one node as sr_check_user (logged in by login.py's LoginAttempt,
which answers its password request), the questions asked of it, and turning the answers
into a ``topology.Probe``; the read-only function names, asked of the primary on the same
connection.  Must never outlive its round, wait past its timeout, or raise: a node that
fails is a Probe that says unreachable, and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet.defer import Deferred

from pgpool_tw.checks.login import LoginAttempt
from pgpool_tw.checks.rows import Row, RowsReply
from pgpool_tw.cluster.topology import Probe, ReplicationRow
from pgpool_tw.config.settings import BackendNode
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.protocol.rows import lsn_from_text

if TYPE_CHECKING:
    from pgpool_tw.checks.sr_check import SrCheck

__all__ = ["APPLICATION_NAME", "FUNCTIONS_SQL", "RECOVERY_SQL", "REPLICATION_SQL", "NodeProbe"]

#: One statement, so role and LSNs are one snapshot; pg_current_wal_lsn() errors in
#: recovery, hence the CASE.
RECOVERY_SQL = (
    "SELECT pg_catalog.pg_is_in_recovery(), "
    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
    "ELSE pg_catalog.pg_current_wal_lsn() END, "
    "pg_catalog.pg_last_wal_replay_lsn(), "
    "EXTRACT(EPOCH FROM pg_catalog.pg_last_xact_replay_timestamp())"
)
#: pgpool-II's columns (replay_lag in seconds here, microseconds there).
REPLICATION_SQL = (
    "SELECT application_name, state, sync_state, EXTRACT(EPOCH FROM replay_lag) "
    "FROM pg_catalog.pg_stat_replication"
)
#: Names no overload of which is VOLATILE: a call of one is declared not to write.
FUNCTIONS_SQL = (
    "SELECT proname FROM pg_catalog.pg_proc GROUP BY proname HAVING bool_and(provolatile <> 'v')"
)
APPLICATION_NAME = "pgpool-tw sr_check"


class NodeProbe:
    """One node's share of one round: log in, ask; ``done`` fires with
    (Probe, why-not-or-None) exactly once, never with an error."""

    def __init__(self, check: SrCheck, backend: BackendNode, timeout: float) -> None:
        self.check = check
        self.backend = backend
        self.done: Deferred[tuple[Probe, Optional[str]]] = Deferred()
        self.server: Optional[BackendProtocol] = None
        self._finished = False
        self._login: Optional[LoginAttempt] = None
        self._probe = Probe(reachable=False)
        self._timeout = timeout
        self._timer = check.reactor.callLater(timeout, self._expire, timeout)

    def start(self) -> None:
        """Log in as sr_check_user (login.py, which answers the password request); the
        round's timer is the only limit."""
        check = self.check
        login = self._login = LoginAttempt(
            check.reactor,
            self.backend,
            check.user,
            check.database,
            check.secret,
            self._timeout,
            0,
            check.tls_for(self.backend) if check.tls_for is not None else None,
            check.tls_required,
            application_name=APPLICATION_NAME,
            keep=self._logged_in,
        )
        login.done.addCallback(self._login_done)

    def _logged_in(self, server: BackendProtocol) -> None:
        server.owner = None
        server.keeper = self  # told if it goes away while asked
        self.server = server

    def _login_done(self, why: Optional[str]) -> None:
        self._login = None
        if why is not None:
            self.fail(why)
        elif self._finished:
            self.close()
        else:
            self.ask("pg_is_in_recovery()", RECOVERY_SQL, self._recovery_answered)

    # -- backend.ServerKeeper ------------------------------------------------------------

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        self.server = None
        self.fail(f"connection lost: {why}")

    # -- asking -------------------------------------------------------------------------

    def ask(self, what: str, sql: str, then: Callable[[list[Row]], None]) -> None:
        """Run ``sql``; ``then(rows)`` when it succeeded, else the node failed (``what``
        names the question in the log line; the server's words are backend.py's)."""
        server = self.server
        assert server is not None
        reply = RowsReply(server.params, server.status)

        def answered(server: BackendProtocol, ok: bool) -> None:
            if self._finished:  # timed out or stopped meanwhile
                return
            if not ok:
                self.fail(f"asking {what} failed")
                return
            then(reply.rows)

        server.fetch(sql, reply, answered)

    def _recovery_answered(self, rows: list[Row]) -> None:
        if len(rows) != 1 or len(rows[0]) != 4 or rows[0][0] not in ("t", "f"):
            self.fail("pg_is_in_recovery() gave no answer")
            return
        in_recovery_text, current, replay, stamp = rows[0]
        self._probe = Probe(
            reachable=True,
            in_recovery=in_recovery_text == "t",
            current_lsn=lsn_from_text(current) if current else None,
            replay_lsn=lsn_from_text(replay) if replay else None,
            replay_timestamp=float(stamp) if stamp else None,
        )
        if self._probe.in_recovery:
            self._succeed()
        else:
            self.ask("pg_stat_replication", REPLICATION_SQL, self._replication_answered)

    def _replication_answered(self, rows: list[Row]) -> None:
        replication = tuple(
            ReplicationRow(
                application_name=row[0] or "",
                state=row[1] or "",
                sync_state=row[2] or "",
                replay_lag=float(row[3]) if row[3] is not None else None,
            )
            for row in rows
            if len(row) == 4
        )
        self._probe = Probe(
            reachable=True,
            in_recovery=self._probe.in_recovery,
            current_lsn=self._probe.current_lsn,
            replay_lsn=self._probe.replay_lsn,
            replay_timestamp=self._probe.replay_timestamp,
            replication=replication,
        )
        self._succeed()

    # -- the end --------------------------------------------------------------------------

    def _succeed(self) -> None:
        if not self._finished:
            self._finished = True
            self.done.callback((self._probe, None))

    def fail(self, why: str) -> None:
        """The node counts as unreachable this round, for ``why`` (logged once per change)."""
        if self._finished:
            return
        self._finished = True
        self.close()
        self.done.callback((Probe(reachable=False), why))

    def _expire(self, timeout: float) -> None:
        self.fail(f"no answer within {timeout:g}s")

    def close(self) -> None:
        """End this node's connection (or login) and its timer."""
        if self._timer.active():
            self._timer.cancel()
        login, self._login = self._login, None
        if login is not None:
            login.cancel()
        server, self.server = self.server, None
        if server is not None:
            server.keeper = None
            if server.transport is not None:
                server.terminate()

    def functions(self) -> Deferred[Optional[frozenset[str]]]:
        """The primary's read-only function names, on this round's connection; None when
        the connection is gone or the query fails (within the round's timeout)."""
        result: Deferred[Optional[frozenset[str]]] = Deferred()
        server = self.server
        if server is None or not server.connected_ok:
            result.callback(None)
            return result
        reply = RowsReply(server.params, server.status)
        timer = self.check.reactor.callLater(self.check.timeout, server.transport.abortConnection)

        def answered(server: BackendProtocol, ok: bool) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            names = frozenset(row[0] for row in reply.rows if row and row[0] is not None)
            result.callback(names if ok else None)

        server.fetch(FUNCTIONS_SQL, reply, answered)
        return result
