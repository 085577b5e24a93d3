"""Types of the C extension built from _speedups.c (see that file for why it exists)."""

from typing import Any, Callable

RECV_SIZE: int

class SessionTracker:
    pending: int
    unsynced: bool
    status: int
    params: dict[str, str]
    in_sync: bool
    server_at_boundary: bool
    _c_head: bytes
    _s_head: bytes
    _s_body: bytes
    def __init__(self, params: dict[str, str], status: int = ...) -> None: ...
    def feed_client(self, data: bytes) -> int: ...
    def feed_server(self, data: bytes) -> None: ...

class Relay:
    received: int
    fds: tuple[int, int]
    def __init__(
        self,
        tracker: SessionTracker,
        client: Any,
        server: Any,
        client_fd: int,
        server_fd: int,
        on_terminate: Callable[[], None],
        writes: set[int],
    ) -> None: ...

def register(fd: int, relay: Relay, side: int) -> None: ...
def unregister(fd: int, relay: Relay) -> None: ...
def poll(epfd: int, timeout_ms: int, maxevents: int) -> list[tuple[int, int]]: ...
