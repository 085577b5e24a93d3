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
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

from twisted.logger import Logger

from pgpool_tw.pool.connector import send_cancel
from pgpool_tw.protocol.startup import CancelRequest

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


def forward(context: SessionContext, request: CancelRequest, peer: str) -> bool:
    """Send ``request`` on with the server's own key, if its key is a live session's.

    Python's sessions first, then the warm lane's; an unknown key is logged and
    dropped (PostgreSQL never answers a CancelRequest either way).
    """
    session: Any = context.cancels.lookup(request.pid, request.key)
    servers = session.cancel_targets() if session is not None else []
    warm = context.warm
    if not servers and warm is not None:
        found = warm.find(request.pid, request.key)
        servers = [found] if found is not None else []
    if not servers:
        if session is not None:
            # A transaction-mode client between transactions: nothing runs to cancel.
            log.info("client={client} cancel request: no statement running", client=peer)
            return False
        # Anyone may send these without logging in: one line a second, with a count.
        dropped = context.unknown_cancels.admit(context.reactor.seconds())
        if dropped >= 0:
            more = f" ({dropped} more since the last)" if dropped else ""
            log.info(
                "client={client} cancel request with an unknown key ignored{more}",
                client=peer,
                more=more,
            )
        return False
    for server in servers:
        send_cancel(context.reactor, server.node, server.pid, server.secret)
    return True
