"""One login to one node as the pooler's own user, to learn whether the node takes logins.

Owns: the connection attempt (within connect_timeout), the password answer (protocol/
backend_auth.py's BackendAuth), the whole attempt's time limit, and the verdict: ``done``
fires once with None (logged in) or why not.  The health check (health.py) makes one per
try, closing the connection again; a lost session server asks one before failover believes
it; the replication check (probe.py) keeps the connection (``keep``) to ask its questions.

Must never: raise, outlive its time limit, keep the connection unless asked, or log (the
caller logs the verdict once per change).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.connector import connect_server
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.backend_auth import BackendAuth
from pgpool_tw.protocol.credentials import Secret
from pgpool_tw.protocol.startup import StartupMessage

__all__ = ["APPLICATION_NAME", "LoginAttempt"]

APPLICATION_NAME = "pgpool-tw health check"


class LoginAttempt:
    """Log in to ``backend`` as ``user`` to ``database``; ``done`` fires with None or why."""

    def __init__(
        self,
        reactor: Any,
        backend: BackendNode,
        user: str,
        database: str,
        secret: Callable[[], Optional[Secret]],
        connect_timeout: float,
        timeout: float,
        tls: Optional[Any] = None,
        tls_required: bool = False,
        application_name: str = APPLICATION_NAME,
        keep: Optional[Callable[[BackendProtocol], None]] = None,
    ) -> None:
        """``keep``: the logged-in server is handed to it (its owner now) rather than
        closed; ``timeout`` 0: no limit of its own."""
        self.reactor = reactor
        self.backend = backend
        self.user = user
        self.database = database
        self._secret = secret
        self.done: Deferred[Optional[str]] = Deferred()
        #: The SQLSTATE of the server's refusal, if it refused (3D000: no such database).
        self.sqlstate = ""
        self._auth: Optional[BackendAuth] = None
        self._server: Optional[BackendProtocol] = None
        self._keep = keep
        self._timer = (
            reactor.callLater(timeout, self._fail, f"no login within {timeout:g}s")
            if timeout > 0
            else None
        )
        startup = StartupMessage(
            (("user", user), ("database", database), ("application_name", application_name))
        )
        self._connector: Any = connect_server(
            reactor,
            backend,
            startup,
            self,
            tls=tls,
            tls_required=tls_required,
            timeout=connect_timeout if connect_timeout > 0 else 3600,
        )

    # -- backend.ServerOwner ------------------------------------------------------------

    def server_forward(self, server: BackendProtocol, raw: bytes) -> None:
        self._server = server
        if raw[0] != m.AUTHENTICATION or self.done.called:
            return
        if self._auth is None:
            self._auth = BackendAuth(self.user, self._secret())
        why = server.answer(self._auth, raw)
        if why:
            self._fail(f"cannot log in as {self.user}: {why}")

    def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None:
        self._server = server

    def server_ready(self, server: BackendProtocol) -> None:
        keep = self._keep
        if self.done.called:  # given up meanwhile
            server.owner = None
            server.terminate()
            return
        if keep is None:
            self._server = server
            self._finish(None)
            return
        self._connector = None
        self._cancel_timer()
        keep(server)  # it is the server's owner from now on
        self.done.callback(None)

    def server_failed(self, server: BackendProtocol, raw: bytes) -> None:
        fields = m.parse_fields(raw[5:])
        self.sqlstate = fields.get("C", "")
        self._fail(f"login refused: {self.sqlstate} {fields.get('M', '')}".rstrip())

    def server_lost(self, server: BackendProtocol, why: str) -> None:
        self._fail(f"connection lost: {why}")

    def server_connect_failed(self, node: BackendNode, why: str) -> None:
        self._fail(f"unreachable: {why}")

    # -- the end --------------------------------------------------------------------------

    def _fail(self, why: str) -> None:
        self._finish(why)

    def cancel(self) -> None:
        """Give up now (the check stopped); ``done`` fires with why."""
        self._finish("the check stopped")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def _finish(self, why: Optional[str]) -> None:
        if self.done.called:
            return
        # Fired first: closing the attempt below may report its failure (a connector's
        # disconnect calls server_connect_failed at once), which must find it over.
        self.done.callback(why)
        self._cancel_timer()
        server, self._server = self._server, None
        connector, self._connector = self._connector, None
        if server is not None:
            server.owner = None
            if server.transport is not None:
                server.terminate()
        elif connector is not None:
            connector.disconnect()
