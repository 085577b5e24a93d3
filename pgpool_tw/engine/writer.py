"""The send-now writer in C, for ``net.transport.make_writer`` on CPython.

``make_writer``'s rule (send at once when Twisted has nothing queued for the
socket, else queue in Twisted) is the C relay's rule too.  To hold it once, a
transport of the epoll reactor gets the C ``SendNow`` (``_writer.c``), which
asks the reactor's write set exactly as the C relay does; the Python writer in
``net/transport.py`` remains for PyPy, ``PGPOOL_TW_PURE_PYTHON=1`` and other
reactors.  ``tests/unit/test_writer.py`` drives both on real sockets through
the same Twisted states and requires the same bytes sent and queued.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from pgpool_tw.engine.speedups import speedups


def c_writer(transport: Any) -> Optional[Callable[[bytes], None]]:
    """A C send-now writer for a plain-socket ``transport``; None when the rule
    cannot be read in C (no extension, or not the epoll reactor's write set)."""
    if speedups is None:
        return None
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return None
    reactor = getattr(transport, "reactor", None)
    writes = getattr(reactor, "_writes", None)  # fds the epoll reactor waits to write to
    if not isinstance(reactor, EPollReactor) or not isinstance(writes, set):
        return None
    writer: Callable[[bytes], None] = speedups.SendNow(transport, transport.socket, writes)
    return writer


__all__ = ["c_writer"]
