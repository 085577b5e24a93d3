"""What a session asks of its client connection: the glue's side of the contract.

``frontend.FrontendProtocol`` implements it over a Twisted transport; the unit
tests implement it with lists.  Everything a ``Session`` does to the client's
socket goes through these methods, so the machine itself never touches I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from pgpool_tw.pool.backend import BackendProtocol
    from pgpool_tw.protocol.relay import SessionTracker


class ClientIO(Protocol):
    """What a session asks of its client connection (the glue's side of the contract)."""

    @property
    def peer(self) -> str: ...
    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def finish(self) -> None: ...
    def start_tls(self, context: Any) -> None: ...
    def peer_host(self) -> Optional[str]: ...
    def peer_common_name(self) -> Optional[str]: ...
    def start_relay(
        self,
        server: BackendProtocol,
        tracker: SessionTracker,
        routed: bool,
        lb: Optional[BackendProtocol] = None,
    ) -> None: ...
    def drop_leg(self, server: BackendProtocol) -> None: ...
    def stop_relay(self, server: BackendProtocol) -> None: ...
    def replay(self, data: bytes) -> None: ...
