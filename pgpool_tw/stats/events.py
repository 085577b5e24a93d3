"""What an embedding application may watch: sessions, server connections, backends.

Observers provide ``IPoolEvents`` (any subset of its methods) and are told of
events that happen once per session or connection, never per message, so
watching costs the relay nothing.  An observer that raises is logged and the
pooler carries on.
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
        """A client was attached to a server connection and can send queries."""

    def client_session_ended(session: SessionInfo) -> None:
        """A client session ended (Terminate, disconnect or error)."""

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
