"""What Python hands the C lane, each rule as data the lane only looks up or counts.

The lane (``_lane.c``, ``_login.c``, ``_warm.c``) decides nothing: it is handed

* the answers to SSLRequest and GSSENCRequest (``session/handshake.py``'s
  ``lane_answers``), set by ``WarmLane.apply``;
* cancel secrets as blocks of random bytes (``session/cancel.py``'s source),
  topped up here on the tick and after a miss when low;
* the free client slots (``Pool.free_slots``), through ``WarmLane.sessions_changed``;
* entries: a client's address and startup packet bytes, for a login that needed
  nothing the lane cannot give (``entry``);
* per lent server, the login's end with the secret's offset
  (``protocol/login_end.py``), the reset queries (``pool.reset_batch``) and the
  sessions it may still start (child_max_connections): ``relay_fields``.

This module builds those values; it never looks at a socket.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Optional

from pgpool_tw.config.settings import Config
from pgpool_tw.lane.watch import StackKey
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.pool.pool import UNPOOLED_DATABASES
from pgpool_tw.pool.reset import reset_batch
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.login_end import login_end
from pgpool_tw.session.cancel import KEY_BLOCK, random_keys

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import Lane

#: Cancel-key bytes under which a miss refills the lane (the tick always tops it up).
KEYS_LOW = KEY_BLOCK // 4


def refill_keys(lane: Lane) -> None:
    """Top the lane's cancel secrets up to a whole block."""
    missing = KEY_BLOCK - lane.keys_left
    if missing > 0:
        lane.add_keys(random_keys(missing))


def relay_fields(server: BackendProtocol, config: Config) -> Optional[dict[str, Any]]:
    """A warm relay's data for ``server``; None when it may start no more sessions."""
    limit = config.child_max_connections
    uses_left = limit - server.sessions if limit else -1
    if uses_left == 0:
        return None
    count, reset = reset_batch(config.reset_query_list, m.IDLE)
    # The secret is the lane's to write, per login; 0 holds its place.
    reply, secret_at = login_end(server.parameter_statuses(), server.pid, 0, m.IDLE)
    return {
        "reply": reply,
        "secret_at": secret_at,
        "reset": reset,
        "reset_count": count,
        "uses_left": uses_left,
        "pid": server.pid & 0xFFFFFFFF,
    }


def entry(client: Any, server: BackendProtocol) -> Optional[tuple[bytes, StackKey]]:
    """The entry a client Python logged in teaches the lane, and its stack's key;
    None when its login needed something the lane cannot give."""
    raw = client.startup_raw
    startup = client.startup
    if (
        raw is None
        or startup is None
        or client.ssl
        or client.auth_ok_sent
        or server.asked_password
        or startup.negotiation() is not None
        or startup.database in UNPOOLED_DATABASES
    ):
        return None
    address = address_bytes(client.address)
    if address is None:
        return None
    return address + raw, (server.pool_key, startup.application_name)


def address_bytes(address: Any) -> Optional[bytes]:
    """The client's IP address as the lane's accept sees it (None: not TCP)."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, host)
        except OSError:
            continue
    return None


def never() -> None:
    """A warm relay's Terminate is the lane's to handle; this is never called."""


__all__ = ["KEYS_LOW", "address_bytes", "entry", "never", "refill_keys", "relay_fields"]
