"""Accepted client sockets: the per-connection work Twisted does that the pooler can skip.

A pooler whose clients connect once per transaction (``pgbench -C``, short-lived
scripts, PHP) pays Twisted's per-connection costs on every transaction, so this
module owns the few places where the pooler does less than Twisted's defaults
with the same result on the wire:

* ``close``: ``loseConnection`` that finishes at once when nothing is waiting to
  be written, instead of registering for writability and closing on the next
  loop turn (two epoll_ctl calls, an empty ``send`` and a trip through the
  reactor's logging-context path per client), and without the ``shutdown()``
  Twisted makes before ``close()``: the descriptor is close-on-exec and this
  process's only one, so ``close()`` alone sends the same FIN.

It must never change what a peer sees (the same FIN after the same bytes) nor
close a connection that still has data queued, a producer or TLS.
"""

from __future__ import annotations

from typing import Any

from pgpool_tw.net import twisted_private
from pgpool_tw.net.transport import plain_socket


def close(transport: Any) -> None:
    """Close ``transport`` after what was written, at once when nothing is queued.

    This is what Twisted's ``loseConnection`` ends in (``connectionLost`` with
    ConnectionDone: an orderly shutdown and close of the socket) minus the loop
    turn it waits for an empty write buffer to drain.  The protocol's
    ``connectionLost`` runs before this returns, so callers must not touch the
    connection afterwards.  Anything else (TLS, queued data, a registered
    producer, a transport that is not a plain socket) takes ``loseConnection``.
    """
    if not (plain_socket(transport) and twisted_private.close_at_once(transport)):
        transport.loseConnection()


__all__ = ["close"]
