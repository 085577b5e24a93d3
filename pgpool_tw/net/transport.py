"""Socket-level helpers shared by both legs of a relay.

Owns what the pooler does below Twisted's transport API: socket options, the
send-now write path and a producer wrapper that can pause a peer but never
close it.  Must not know anything about the PostgreSQL protocol.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer, ISystemHandle, ITCPTransport
from zope.interface import implementer

from pgpool_tw.net import twisted_private

Writer = twisted_private.Writer


#: What every TCP leg gets (unix sockets need neither).
_TCP_OPTIONS = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
)


#: tcp_keepalives_idle, _interval, _count as (option, seconds or probes), the ones set
#: (not 0); the service sets them from its configuration (``set_keepalives``).
_keepalives: tuple[tuple[int, int], ...] = ()


def set_keepalives(idle: int, interval: int, count: int) -> None:
    """The keepalive settings every TCP leg opened from now on gets (0: the kernel's)."""
    global _keepalives
    wanted = (
        (getattr(socket, "TCP_KEEPIDLE", None), idle),
        (getattr(socket, "TCP_KEEPINTVL", None), interval),
        (getattr(socket, "TCP_KEEPCNT", None), count),
    )
    _keepalives = tuple((option, value) for option, value in wanted if option and value)


def _set_tcp_options(skt: socket.socket) -> None:
    for level, option in _TCP_OPTIONS:
        skt.setsockopt(level, option, 1)
    for option, value in _keepalives:
        skt.setsockopt(socket.IPPROTO_TCP, option, value)


def tune_socket(transport: Any) -> None:
    """TCP_NODELAY and SO_KEEPALIVE on TCP legs; unix sockets need neither.

    Called before any TLS starts: ``getHandle`` (ISystemHandle) is the socket then.
    """
    if ITCPTransport.providedBy(transport):
        skt: Any = ISystemHandle(transport).getHandle()  # tcp.Connection: its socket
        _set_tcp_options(skt)


#: Linux gives an accepted TCP socket its listening socket's TCP_NODELAY and
#: SO_KEEPALIVE (and starts the keepalive timer); other kernels may not.
ACCEPTED_SOCKETS_INHERIT_OPTIONS = sys.platform.startswith("linux")


def tune_listener(port: Any) -> bool:
    """Set ``tune_socket``'s options once on a listening TCP port.

    True when every client it accepts will have them already, so the two
    setsockopt calls per accepted client can be skipped.
    """
    skt = twisted_private.listening_socket(port)
    if skt is None or skt.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    _set_tcp_options(skt)
    return ACCEPTED_SOCKETS_INHERIT_OPTIONS


def plain_socket(transport: Any) -> bool:
    """A TCP or unix socket Twisted writes to directly: no TLS layer in between.

    Only such a transport may be sent to past Twisted (the send-now writer, the C
    relay) or closed without its loop turn (accepted.close).
    """
    # TLS is _newtls.ConnectionMixin's documented ivar; ISSLTransport.providedBy
    # says the same at 2.5 times the cost (both set by startTLS in 25.5.0, 26.10.0).
    return isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", False)


def make_writer(transport: Any) -> Writer:
    """A ``write`` that sends at once when nothing is queued.

    Twisted's ``write`` always queues, registers the socket for writability and
    sends on a later loop iteration (two epoll_ctl calls and a loop turn per
    message).  When the transport's buffers are empty the data is sent straight
    away; whatever the kernel does not take, and every write while anything is
    queued, goes through ``transport.write`` so ordering, flow control and error
    handling stay Twisted's.  Transports that are not plain sockets (TLS) just
    get their own ``write``.  On CPython with the C extension the same rule runs
    in C: callers take ``engine.writer.make_writer``, which falls back to this
    one on PyPy, in pure Python and on other reactors (tests compare the two).
    """
    if not plain_socket(transport):
        return transport.write
    return twisted_private.send_now_writer(transport) or transport.write


@implementer(IPushProducer)
class PeerProducer:
    """Lets one leg's full write buffer pause reading on the other leg.

    Registering a transport itself as the producer would make Twisted call its
    ``stopProducing`` (which closes it) when the consumer disconnects; a server
    connection must survive its client, so this wrapper only pauses and resumes.
    """

    __slots__ = ("_transport", "paused")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """The consumer went away; the caller decides what happens to this leg."""


def link(a: Any, b: Any) -> tuple[PeerProducer, PeerProducer]:
    """Make each transport the other's flow-control producer."""
    pa, pb = PeerProducer(a), PeerProducer(b)
    b.registerProducer(pa, True)
    a.registerProducer(pb, True)
    return pa, pb


def unlink(a: Any, b: Any, producers: tuple[PeerProducer, PeerProducer]) -> None:
    """Undo ``link`` and resume any leg that was left paused."""
    for transport in (a, b):
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
    for producer in producers:
        if producer.paused:
            producer.resumeProducing()


__all__ = [
    "PeerProducer",
    "Writer",
    "link",
    "make_writer",
    "plain_socket",
    "tune_listener",
    "tune_socket",
    "unlink",
]
