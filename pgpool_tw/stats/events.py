"""What an embedding application may watch: sessions, server connections, backends.

Observers provide ``IPoolEvents`` (any subset of its methods) and are told of
events that happen once per session or connection, never per message, so
watching costs the relay nothing and never turns the C fast path off.  An
observer that raises is logged and the pooler carries on.

Timing: events are fired as they happen, except the sessions of warm logins
(clients the C loop logs in and relays itself under ``twistd pgpool``, see
``lane/warm.py``).  While observers exist the loop records their starts and
ends, and the service's tick (once a second) fires them, so those two events
arrive up to a tick late, still in order.  A warm session handed to Python's
relay mid-way (a slow reader) is reported as its warm part, started and
ended, then as the Python session that carries it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from zope.interface import Interface

log = Logger()


@dataclass(frozen=True)
class SessionInfo:
    client: str  # "host:port" or "local"
    user: str
    database: str
    application_name: str
    server_pid: int


@dataclass(frozen=True)
class ServerInfo:
    address: str  # the backend node, "host:port" or the unix socket path
    user: str
    database: str
    pid: int


class IPoolEvents(Interface):
    """Events of a pgpool-tw service, for code embedding it."""

    def client_session_started(session: SessionInfo) -> None:
        """A client was attached to a server connection and can send queries.

        For a warm login (served by the C loop) this comes on the next tick,
        up to a second late; the session may even have ended by then.
        """

    def client_session_ended(session: SessionInfo) -> None:
        """A client session ended (Terminate, disconnect or error).

        ``session`` equals the one given to ``client_session_started``.  For a
        warm login this too comes on the next tick, up to a second late.  A
        session that started before the observer was added is not reported.
        """

    def server_connection_opened(server: ServerInfo) -> None:
        """A new server connection finished its login."""

    def server_connection_closed(server: ServerInfo) -> None:
        """A server connection closed."""

    def backend_status_changed(address: str, status: str) -> None:
        """A backend node became ``"up"`` or ``"unreachable"``."""


class EventHub:
    """Fans events out to observers; missing methods are skipped."""

    def __init__(self) -> None:
        self.observers: list[Any] = []
        self._backend_status: dict[str, str] = {}

    def add(self, observer: Any) -> None:
        self.observers.append(observer)

    def remove(self, observer: Any) -> None:
        self.observers.remove(observer)

    def fire(self, event: str, *args: Any) -> None:
        for observer in list(self.observers):
            method = getattr(observer, event, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception:
                log.failure(
                    "observer {observer!r} failed on {event}", observer=observer, event=event
                )

    def backend_status(self, address: str, status: str) -> None:
        """Fire ``backend_status_changed`` only when the status really changes."""
        if self._backend_status.get(address) != status:
            self._backend_status[address] = status
            self.fire("backend_status_changed", address, status)
