"""The end of a client's login, as a direct connection to PostgreSQL sends it.

One rule for both paths that log a client in: ``Session._attach`` sends it for
a Python login, and the warm lane is handed the same bytes when Python lends it
a server (``lane/warm.py``), together with where the cancel secret sits, so
the C lane only writes a fresh secret there and never knows the messages'
layout.  No I/O here.
"""

from __future__ import annotations

from pgpool_tw.protocol import messages as m

#: Where the secret starts inside BackendKeyData: type, length, process id.
_SECRET_IN_KEY_DATA = 1 + 4 + 4


def login_end(
    statuses: bytes, pid: int, secret: int, status: int, auth_ok: bool = True
) -> tuple[bytes, int]:
    """AuthenticationOk (unless already sent), ParameterStatus messages, BackendKeyData
    and ReadyForQuery in one buffer, and the offset of BackendKeyData's 4 secret bytes."""
    head = m.authentication_ok() + statuses if auth_ok else statuses
    key_data = m.backend_key_data(pid, secret)
    return head + key_data + m.ready_for_query(status), len(head) + _SECRET_IN_KEY_DATA


__all__ = ["login_end"]
