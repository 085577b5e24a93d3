"""The pooler's own cancel keys, where each one points now, and forwarding a cancel.

A client is told the server's real process id (so ``pg_backend_pid()`` and
NOTIFY agree with what it was told) and a secret key the pooler made up for
this one session.  A CancelRequest is honoured only while that session is live
and only with that secret, so a client that once held a pooled server
connection cannot cancel the queries of the next client on it.  Must never
hold the server's own key longer than the session it belongs to, nor compare a
key in a way whose time depends on how much of it matched: Python sessions are
looked up here with ``hmac.compare_digest``, warm sessions by the C lane's
``find``, which compares all four bytes every time.

A CancelRequest reaches a server at most once, and only while the statements
under way when it came may still run (``in_flight``): a client whose statement
already answered must not have its next one cancelled by a late request.  Must
never send a request twice, retry one, or close the client's cancel connection
before the server closed the pooler's (``forward``).
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any, Callable, Generic, NamedTuple, Optional, TypeVar

from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.pool.connector import connect
from pgpool_tw.protocol.startup import CancelRequest, cancel_request

if TYPE_CHECKING:
    from pgpool_tw.session.context import SessionContext

log = Logger()

T = TypeVar("T")

_KEY_BYTES = 4
#: Random bytes drawn at once: 1024 keys per getrandom call.
KEY_BLOCK = 4096

_random = bytearray()


def random_keys(n: int = KEY_BLOCK) -> bytes:
    """``n`` bytes from the OS's CSPRNG: the one source of every cancel secret.

    Python's sessions take theirs through ``new_secret``; the warm lane is handed
    whole blocks (``WarmLane``) and takes 4 bytes per warm login.
    """
    return secrets.token_bytes(n)


def new_secret() -> int:
    """A fresh random signed Int32, as BackendKeyData carries.

    Drawn from the OS's CSPRNG 4 KiB at a time (one getrandom call per 1024
    sessions, not one per session); each key is used once and forgotten.
    """
    if not _random:
        _random.extend(random_keys())
    key = int.from_bytes(_random[-_KEY_BYTES:], "big", signed=True)
    del _random[-_KEY_BYTES:]
    return key


def _key_bytes(key: int) -> bytes:
    return key.to_bytes(_KEY_BYTES, "big", signed=True)


class CancelRegistry(Generic[T]):
    """Live sessions by the (pid, secret) their client was given."""

    def __init__(self) -> None:
        self._sessions: dict[int, tuple[bytes, T]] = {}

    def register(self, pid: int, secret: int, session: T) -> None:
        self._sessions[pid] = (_key_bytes(secret), session)

    def unregister(self, pid: int, session: T) -> None:
        entry = self._sessions.get(pid)
        if entry is not None and entry[1] is session:
            del self._sessions[pid]

    def unused_pid(self) -> int:
        """A pid for a client whose server changes (transaction pooling): above any
        PostgreSQL pid (pid_max is at most 2^22), unused by a live session."""
        while True:
            pid = (new_secret() & 0x3FFFFFFF) | 0x40000000
            if pid not in self._sessions:
                return pid

    def lookup(self, pid: int, secret: int) -> Optional[T]:
        """The session this key belongs to, compared in constant time, or None."""
        entry = self._sessions.get(pid)
        try:
            offered = _key_bytes(secret)
        except OverflowError:
            return None
        if entry is None:
            hmac.compare_digest(offered, offered)
            return None
        return entry[1] if hmac.compare_digest(entry[0], offered) else None

    def __len__(self) -> int:
        return len(self._sessions)


#: A test that the statements a cancel was sent for may still be running.
Still = Callable[[], bool]
#: Seconds a forwarded cancel may take to connect, and then for the server to close.
DELIVERY_TIMEOUT = 10.0


class Target(NamedTuple):
    """A server a CancelRequest goes to, and whether what it was sent for still runs."""

    node: BackendNode
    pid: int
    secret: int
    still: Still


def in_flight(tracker: Any) -> Optional[Still]:
    """What ``tracker`` has under way now, as a test that it may still be running; None
    when nothing is.

    ``tracker`` is a session's (``protocol/relay.py``, its C twin) or a transaction-mode
    stream: ``pending`` counts its Query/Sync/FunctionCall messages with no
    ReadyForQuery yet, and ``busy_since`` changes only when ``pending`` leaves 0.  The
    statements under way when the cancel came have all answered once ``pending`` was
    0 again, which changed ``busy_since`` if anything was sent since: the cancel is
    then not delivered, or it would stop the client's next statement (psycopg sends a
    second cancel when the error comes before the ReadyForQuery; PostgreSQL ignores it
    then, as its backend is idle).  A pipeline that never lets ``pending`` reach 0 is
    one busy period: a cancel for it may stop a later statement of the same pipeline.
    Extended-protocol messages with no Sync yet (an Execute and a Flush) count as
    under way until their Sync's answer (or a later one: the Sync's busy period
    starts after the cancel came).
    """
    if tracker.pending > 0:
        since = tracker.busy_since
        return lambda: tracker.pending > 0 and tracker.busy_since == since
    if tracker.unsynced:
        return lambda: tracker.pending > 0 or tracker.unsynced
    return None


def lane_in_flight(client: Any) -> Optional[Still]:
    """The same for a transaction-mode client on the C lane (``TxClient``): a statement
    runs there while it is ``owed``, and ``sent_at`` tells one statement from the next."""
    if not client.owed:
        return None
    since = client.sent_at
    return lambda: bool(client.owed) and client.sent_at == since


def leg_in_flight(stream: Any, index: int) -> Optional[Still]:
    """The same for leg ``index`` of a routed stream (``routed.py``): a statement the
    C router forwards (its ``received`` counts them), else the last of the client's
    units the leg owes an answer (units answer in order: the others are done first)."""
    fast = stream.fast
    leg = stream.legs[index]
    if fast is not None and fast.busy == index:
        seen = fast.received
        return lambda: stream.fast is fast and fast.busy == index and fast.received == seen
    owed = [unit for unit in leg.units if unit.client]
    if not owed:
        return None
    last = owed[-1]
    return lambda: any(unit is last for unit in leg.units)


def forward(
    context: SessionContext,
    request: CancelRequest,
    peer: str,
    answered: Callable[[], None],
) -> bool:
    """Send ``request`` on with the server's own key, if its key is a live session's
    and a statement of that session runs; ``answered()`` when done with it.

    Python's sessions first, then the warm lane's; an unknown key is logged and
    dropped (PostgreSQL never answers a CancelRequest either way).  A request is
    sent at most once to each server, only if its statements may still run when
    the connection to the server is up, and ``answered`` (the client's connection
    closes) only once the server closed that connection: PostgreSQL closes it when
    the cancel was processed, and libpq waits for that, so a client that cancels and
    then sends its next statement cannot overtake its own cancel.
    """
    session: Any = context.cancels.lookup(request.pid, request.key)
    known = session is not None
    targets: list[Target] = session.cancel_targets() if known else []
    warm = context.warm
    if not known and warm is not None:
        found = warm.cancel_target(request.pid, request.key)
        known = found is not None
        targets = found or []
    if not known:
        # Anyone may send these without logging in: one line a second, with a count.
        more = context.unknown_cancels.more(context.reactor.seconds())
        if more is not None:
            log.info(
                "client={client} cancel request with an unknown key ignored{more}",
                client=peer,
                more=more,
            )
    if not targets:
        # Nothing runs to cancel (PostgreSQL ignores such a cancel too): dropped quietly.
        answered()
        return False
    waiting = _Answer(len(targets), answered)
    for target in targets:
        factory = _DeliveryFactory(context.reactor, target, waiting.one_done)
        connect(context.reactor, target.node, factory, timeout=DELIVERY_TIMEOUT)
    return True


class _Answer:
    """Calls ``answered`` once every delivery of one request is over."""

    __slots__ = ("left", "answered")

    def __init__(self, left: int, answered: Callable[[], None]) -> None:
        self.left = left
        self.answered = answered

    def one_done(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.answered()


class _Delivery(Protocol):
    """One CancelRequest on its own connection to the server, sent once or not at all."""

    transport: Any

    def __init__(self, factory: _DeliveryFactory) -> None:
        self.factory = factory
        self.timer: Any = None

    def connectionMade(self) -> None:
        target = self.factory.target
        if not target.still():
            # What it was sent for answered meanwhile: the next statement is not its.
            self.transport.loseConnection()
            return
        self.transport.write(cancel_request(target.pid, target.secret))
        self.timer = self.factory.reactor.callLater(
            DELIVERY_TIMEOUT, self.transport.abortConnection
        )

    def dataReceived(self, data: bytes) -> None:
        """PostgreSQL sends nothing back; whatever comes is ignored."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.factory.finished()


class _DeliveryFactory(ClientFactory):
    noisy = False

    def __init__(self, reactor: Any, target: Target, done: Callable[[], None]) -> None:
        self.reactor = reactor
        self.target = target
        self.done: Optional[Callable[[], None]] = done

    def buildProtocol(self, addr: Any) -> _Delivery:
        return _Delivery(self)

    def finished(self) -> None:
        done, self.done = self.done, None
        if done is not None:
            done()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        log.warn(
            "server={server} cancel for pid {pid} not delivered: {why}",
            server=self.target.node.address,
            pid=self.target.pid,
            why=reason.getErrorMessage(),
        )
        self.finished()
