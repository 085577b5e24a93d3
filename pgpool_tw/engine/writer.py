"""The send-now writer: in C where the epoll reactor's write set can be read, else Python's.

``make_writer``'s rule (send at once when Twisted has nothing queued for the
socket, else queue in Twisted) is the C relay's rule too.  To hold it once, a
transport of the epoll reactor gets the C ``SendNow`` (``_writer.c``), which
asks the reactor's write set exactly as the C relay does; the Python writer in
``net/transport.py`` remains for PyPy, ``PGPOOL_TW_PURE_PYTHON=1`` and other
reactors.  ``tests/unit/test_writer.py`` drives both on real sockets through
the same Twisted states and requires the same bytes sent and queued.  It
lives here, not in ``net/``, so that the socket room never imports the engine.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.net import transport as net
from pgpool_tw.net.twisted_private import connection_socket, reactor_writes


def c_writer(transport: Any) -> Optional[Callable[[bytes], None]]:
    """A C send-now writer for a plain-socket ``transport``; None when the rule
    cannot be read in C (no extension, or not the epoll reactor's write set)."""
    if speedups is None:
        return None
    writes = reactor_writes(getattr(transport, "reactor", None))
    skt = connection_socket(transport)
    if writes is None or skt is None:
        return None
    writer: Callable[[bytes], None] = speedups.SendNow(transport, skt, writes)
    return writer


def make_writer(transport: Any, in_c: bool = True) -> net.Writer:
    """``transport``'s send-now writer (see ``net.transport.make_writer``), in C when it can.

    ``in_c=False`` asks for the Python one: the tests compare the two.
    """
    if not net.plain_socket(transport):
        return transport.write
    fast = c_writer(transport) if in_c else None
    return fast if fast is not None else net.make_writer(transport)


__all__ = ["c_writer", "make_writer"]
