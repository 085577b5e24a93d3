"""Types of the C extension built from _speedups.c (see that file for why it exists)."""

from typing import Any, Callable

from pgpool_tw.protocol.relay import SessionTracker as PythonSessionTracker

RECV_SIZE: int
EV_ENDED: int
EV_RESET: int
EV_PROMOTE: int
EV_LEFT: int
EV_LISTENER: int
W_PARKED: int
W_ACTIVE: int
W_RESETTING: int
W_RETURNED: int
NOTE_STARTED: int
NOTE_ENDED: int
EV_TX_RETURN: int
EV_TX_LOST: int
EV_TX_RETIRED: int

def log2_bucket(seconds: float) -> int: ...

class SessionTracker(PythonSessionTracker):
    """The same object as protocol.relay.SessionTracker, in C (compared by the tests)."""

    pending: int
    unsynced: bool
    status: int
    params: dict[str, str]
    in_sync: bool
    server_at_boundary: bool
    queries: int
    xacts: int
    bytes_in: int
    bytes_out: int
    _c_head: bytes
    _s_head: bytes
    _s_body: bytes
    local: bool
    watch: tuple[bytes, ...]
    def __init__(
        self, params: dict[str, str], status: int = ..., watch: tuple[bytes, ...] = ...
    ) -> None: ...
    def pass_query(self, size: int, sent: int) -> None: ...
    def take_counts(self) -> tuple[int, int, int, int]: ...
    def take_times(self) -> tuple[float, tuple[int, ...]]: ...
    def feed_client(self, data: bytes) -> int: ...
    def feed_server(self, data: bytes) -> None: ...

class Relay:
    received: int
    fds: tuple[int, int]
    state: int
    uses: int
    parked_at: float
    secret: int
    connection: Any
    tracker: SessionTracker
    def __init__(
        self,
        tracker: SessionTracker,
        client: Any,
        server: Any,
        client_fd: int,
        server_fd: int,
        on_terminate: Callable[[bytes], None],
        writes: set[int],
        lane: Lane = ...,
        stack: list[Relay] = ...,
        connection: Any = ...,
        reply: bytes = ...,
        reset: bytes = ...,
        reset_count: int = ...,
        uses_left: int = ...,
        pid: int = ...,
        secret_at: int = ...,
    ) -> None: ...
    def promote(self) -> None: ...
    def drop(self, last_words: bytes) -> None: ...

class Lane:
    entries: dict[bytes, list[Relay]]
    answers: dict[bytes, tuple[bytes, int]]
    closing: int
    wake: int
    free: int
    active: int
    keys_left: int
    pending: int
    hits: int
    misses: int
    pending_cap: int
    shed: int
    log: list[tuple[int, Relay, bytes, int]] | None
    def __init__(
        self,
        epfd: int,
        on_miss: Callable[[int, int, bytes, int, float], None],
        on_event: Callable[[int, Relay | None, Any], None],
    ) -> None: ...
    def listen(self, fd: int) -> None: ...
    def unlisten(self, fd: int) -> None: ...
    def sweep(self, cutoff: float) -> list[tuple[bytes, int, int, int]]: ...
    def oldest_pending(self) -> float | None: ...
    def shed_oldest(self) -> bool: ...
    def drop_pending(self) -> int: ...
    def add_keys(self, random_bytes: bytes) -> int: ...
    def sessions(self) -> list[Relay]: ...
    def find(self, pid: int, secret: int) -> Any: ...

class SendNow:
    """net.transport.make_writer's writer in C (_writer.c)."""

    def __init__(self, transport: Any, socket: Any, writes: set[int]) -> None: ...
    def __call__(self, data: bytes) -> None: ...

class ResetReply:
    """The C reader of a reset's answer (_reset.c), for tests against protocol/reset_reply.py."""

    def __init__(self, tracker: SessionTracker, owed: int) -> None: ...
    def feed(self, data: bytes) -> int: ...

class Router:
    """A routed session's sockets on the C loop (_route.c)."""

    busy: int
    received: int
    state: int
    moves: int
    def __init__(
        self,
        fds: tuple[int, ...],
        transports: tuple[Any, ...],
        writes: set[int],
        shapes: dict[bytes, int],
        on_data: tuple[Callable[[bytes], object] | None, ...],
        on_adopt: Callable[[int, int, int], object],
    ) -> None: ...
    def arm(self, table: bytes, states: int) -> None: ...
    def disarm(self) -> None: ...
    def forget(self, side: int) -> None: ...
    def take_counts(self) -> tuple[int, int, int, int, int, int]: ...

class TxServer:
    """A server connection a TxLane may lend (_txlane.c)."""

    backend: Any
    tag: int
    busy: bool
    def __init__(self, backend: Any, transport: Any, fd: int, tag: int) -> None: ...
    def retire(self) -> None: ...

class TxLane:
    """One pool key's transaction-mode servers on the C loop (_txlane.c)."""

    idle_count: int
    waiting: int
    busy: int
    max_wait: float
    counts: tuple[int, int, int]
    py_first: int
    room: bool
    def __init__(
        self,
        shapes: dict[bytes, int],
        writes: set[int],
        on_event: Callable[[int, TxServer], object],
    ) -> None: ...
    def give(self, server: TxServer) -> None: ...
    def take(self) -> TxServer | None: ...
    def remove(self, server: TxServer) -> bool: ...
    def idle(self) -> list[tuple[TxServer, float]]: ...
    def expire(self, seconds: float) -> list[TxClient]: ...
    def kick(self) -> bool: ...
    def arrive(self) -> int: ...
    def take_counts(self) -> tuple[int, int, int, int]: ...
    def take_waited(self) -> float: ...
    def take_times(self) -> tuple[float, tuple[int, ...]]: ...
    def take_waits(self) -> tuple[float, tuple[int, ...]]: ...
    def close(self) -> None: ...

class TxClient:
    """A transaction-mode client on a TxLane (_txlane.c)."""

    server: TxServer | None
    owed: bool
    sent_at: float
    armed: bool
    waiting: bool
    received: int
    bytes_in: int
    bytes_out: int
    owner: Callable[[], object]
    def __init__(
        self,
        lane: TxLane,
        transport: Any,
        fd: int,
        on_data: Callable[[bytes], object],
        on_adopt: Callable[[TxServer, int, bytes, int], object],
        owner: Callable[[], object],
    ) -> None: ...
    def arm(self, tag: int) -> None: ...
    def hold(self, server: TxServer) -> None: ...
    def disarm(self) -> None: ...
    def forget(self) -> None: ...

def shape_key(data: bytes | bytearray | memoryview) -> bytes | None: ...
def register_router(fd: int, router: Router, side: int) -> None: ...
def register(fd: int, relay: Relay, side: int) -> None: ...
def unregister(fd: int, relay: Relay) -> None: ...
def poll(epfd: int, timeout_ms: int, maxevents: int) -> list[tuple[int, int]]: ...
