"""The only module allowed to touch Twisted's private and undocumented parts.

The pooler's fast paths need what Twisted keeps in attributes it does not
document: whether a transport has anything queued (the send-now writer, closing
an accepted client without a loop turn), the epoll reactor's descriptor tables
(the lean and the C iteration), what ``Port.doRead`` does with an accepted
socket (the warm lane accepts in C), and the option bits of a
``CertificateOptions``.  Any Twisted release may rename or drop them, so every
such access lives here, next to a note naming the Twisted versions whose source
it was read against, and ``tests/unit/test_twisted_private.py`` fails when any
other module under ``pgpool_tw`` reads or writes a ``_`` attribute on an object
that is not its own (or one of the undocumented names below).

Read against Twisted 25.5.0 (the benchmark's PyPy venv) and 26.10.0 (the
development venv): ``twisted/internet/{epollreactor,posixbase,base,abstract,
tcp,_sslverify}.py``.  When a part is missing, each function returns None or
False and its caller takes Twisted's public path: slower, never wrong.  A new
Twisted: read the lines each note names, then add its version to ``CHECKED_ON``
(a test fails until someone has).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, NamedTuple, Optional

from twisted.internet import main
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Twisted versions whose source every note below was checked against.
CHECKED_ON = ("25.5.0", "26.10.0")

Writer = Callable[[bytes], None]

#: The reason Twisted itself passes for a clean close (its reactors share one
#: Failure per reason the same way: posixbase ``_disconnectSelectable``'s faildict).
_DONE = Failure(main.CONNECTION_DONE)


# -- the epoll reactor ------------------------------------------------------------


class EpollParts(NamedTuple):
    """The epoll reactor's tables and steps the lean iteration runs on.

    25.5.0 and 26.10.0 (identical epollreactor.py; posixbase.py differs only in
    type hints): ``EPollReactor.__init__`` makes ``_poller = epoll(1024)``,
    ``_selectables = {}`` (fd -> selectable), ``_writes = set()`` (fds it waits
    to write: a non-empty write queue); ``doPoll`` calls
    ``_poller.poll(timeout, len(_selectables))`` and hands each event to
    ``_doReadOrWrite(selectable, fd, event)`` (``_PollLikeMixin``), which ends in
    ``_disconnectSelectable(selectable, why, isRead)`` (``PosixReactorBase``).
    """

    selectables: dict[int, Any]
    writes: set[int]
    poller: Any  # select.epoll
    read_or_write: Callable[[Any, int, int], None]
    disconnect: Callable[[Any, BaseException, bool], None]


def epoll_parts(reactor: Any) -> Optional[EpollParts]:
    """``reactor``'s epoll tables, or None when it is not an epoll reactor that has them."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return None
    if not isinstance(reactor, EPollReactor):
        return None
    selectables = getattr(reactor, "_selectables", None)
    writes = getattr(reactor, "_writes", None)
    poller = getattr(reactor, "_poller", None)
    read_or_write = getattr(reactor, "_doReadOrWrite", None)
    disconnect = getattr(reactor, "_disconnectSelectable", None)
    if (
        not isinstance(selectables, dict)
        or not isinstance(writes, set)
        or not hasattr(poller, "poll")
        or not hasattr(poller, "fileno")
        or not callable(read_or_write)
        or not callable(disconnect)
    ):
        log.warn("the epoll reactor's private tables moved: Twisted's own loop runs")
        return None
    return EpollParts(selectables, writes, poller, read_or_write, disconnect)


def reactor_writes(reactor: Any) -> Optional[set[int]]:
    """The fds an epoll ``reactor`` waits to write to (a non-empty write queue), or None.

    ``_writes`` as in ``EpollParts``; read once per connection by the C writer,
    so nothing is logged when it is missing: the Python writer serves instead.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # not Linux
        return None
    if not isinstance(reactor, EPollReactor):
        return None
    writes = getattr(reactor, "_writes", None)
    return writes if isinstance(writes, set) else None


def replace_iteration(reactor: Any, iterate: Callable[[Optional[float]], None]) -> bool:
    """Make ``iterate`` the reactor's loop step; False when something already replaced it.

    ``doIteration`` is public by name but not an interface: 25.5.0 and 26.10.0
    ``ReactorBase.mainLoop`` and ``iterate`` call ``self.doIteration(delay)``
    (base.py), and ``EPollReactor.doIteration = doPoll`` is a class attribute,
    so an instance attribute shadows it and deleting that restores it.
    """
    if "doIteration" in vars(reactor):
        return False
    reactor.doIteration = iterate
    return True


def restore_iteration(reactor: Any) -> None:
    """Give ``reactor`` its own loop step back (see ``replace_iteration``)."""
    vars(reactor).pop("doIteration", None)


# -- a connected TCP or unix transport -----------------------------------------


def send_now_writer(transport: Any) -> Optional[Writer]:
    """``transport.write`` that sends at once when Twisted has nothing queued; None if unknown.

    25.5.0 and 26.10.0 ``abstract.FileDescriptor``: ``write`` appends to
    ``_tempDataBuffer`` and adds to ``_tempDataLen``; ``doWrite`` moves that into
    ``dataBuffer`` and sends from it; ``loseConnection`` sets ``disconnecting``.
    Nothing is queued exactly when ``dataBuffer`` and ``_tempDataLen`` are empty
    (``_isSendBufferFull`` reads the same two); ``tcp.Connection.socket`` is the
    socket ``writeSomeData`` sends on.  The checks stay inline in the closure
    (three attribute reads, as before this module existed): a call per write
    would cost the relay's per-message path.
    """
    skt = getattr(transport, "socket", None)
    if (
        skt is None
        or not hasattr(transport, "dataBuffer")
        or not hasattr(transport, "_tempDataLen")
        or not hasattr(transport, "disconnecting")
    ):
        return None
    send = skt.send
    queue_write = transport.write

    def write(data: bytes) -> None:
        if transport.dataBuffer or transport._tempDataLen or transport.disconnecting:
            queue_write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN, or an error Twisted's own write path will report.
            queue_write(data)
            return
        if sent < len(data):
            queue_write(data[sent:])

    return write


def close_at_once(transport: Any) -> bool:
    """Finish ``transport`` now (ConnectionDone) when nothing is queued; False to leave it.

    What ``loseConnection`` ends in, minus its loop turn: 25.5.0 and 26.10.0
    ``tcp.Connection.connectionLost`` closes the socket and calls the protocol's
    ``connectionLost``; ``_SocketCloser._shouldShutdown`` (tcp.py, True by
    default, False for a listening Port) skips the ``shutdown()`` before
    ``close()``.  Nothing is queued as in ``send_now_writer``; ``producer`` is
    ``abstract._ConsumerMixin``'s documented ivar.  Per client closed, so the
    attributes are read directly (a missing one answers False).
    """
    try:
        if (
            not transport.connected
            or transport.disconnecting
            or transport.producer is not None
            or transport.dataBuffer
            or transport._tempDataLen
        ):
            return False
    except AttributeError:  # not a FileDescriptor as 25.5.0 and 26.10.0 make it
        return False
    # Without this switch (a later Twisted) close() follows a shutdown(): the same FIN.
    transport._shouldShutdown = False  # the descriptor is close-on-exec and ours alone
    transport.connectionLost(_DONE)
    return True


def connection_socket(transport: Any) -> Optional[socket.socket]:
    """The socket a TCP or unix ``transport`` sends on, or None.

    25.5.0 and 26.10.0 ``tcp.Connection.__init__`` sets ``self.socket`` (the one
    ``writeSomeData`` sends on; ``getHandle`` returns it too, but only
    ``ITCPTransport`` promises that, not a unix transport).
    """
    skt = getattr(transport, "socket", None)
    return skt if isinstance(skt, socket.socket) else None


def listening_socket(port: Any) -> Optional[socket.socket]:
    """The socket of a listening TCP ``port``, or None.

    25.5.0 and 26.10.0 ``tcp.Port.startListening`` sets ``self.socket`` (not in
    ``IListeningPort``; ``Port`` has no ``getHandle``).
    """
    skt = getattr(port, "socket", None)
    return skt if isinstance(skt, socket.socket) else None


def adopt_socket(
    port: Any, skt: socket.socket, addr: Any, factory: Any, reactor: Any
) -> Optional[Any]:
    """Give a socket accepted off ``port`` a protocol and transport; the protocol, or None.

    25.5.0 and 26.10.0 ``tcp.Port.doRead``, per accepted socket: an IPv6
    address's host is made numeric with ``getnameinfo`` (the caller does that),
    ``factory.buildProtocol(self._buildAddr(addr))`` (None: close the socket),
    ``s = self.sessionno; self.sessionno = s + 1``,
    ``self.transport(skt, protocol, addr, self, s, self.reactor)``,
    ``protocol.makeConnection(transport)``.  25.5.0 also sets close-on-exec
    (``fdesc._setCloseOnExec``); the lane accepts with SOCK_CLOEXEC.  When those
    parts are missing, the public ``IReactorSocket.adoptStreamConnection`` does it
    on a duplicate of the descriptor (its transport has no listening port).
    """
    build_addr = getattr(port, "_buildAddr", None)
    session = getattr(port, "sessionno", None)
    transport_type = getattr(port, "transport", None)
    if not callable(build_addr) or not isinstance(session, int) or transport_type is None:
        return _adopt_publicly(skt, factory, reactor)
    protocol = factory.buildProtocol(build_addr(addr))
    if protocol is None:
        skt.close()
        return None
    port.sessionno = session + 1
    transport = transport_type(skt, protocol, addr, port, session, reactor)
    protocol.makeConnection(transport)
    return protocol


def _adopt_publicly(skt: socket.socket, factory: Any, reactor: Any) -> Optional[Any]:
    built: list[Any] = []

    class Capture:
        def buildProtocol(self, addr: Any) -> Any:
            protocol = factory.buildProtocol(addr)
            built.append(protocol)
            return protocol

    try:
        reactor.adoptStreamConnection(skt.fileno(), skt.family, Capture())
    finally:
        skt.close()  # adoptStreamConnection duplicated it
    return built[0] if built else None


# -- TLS -----------------------------------------------------------------------


def clear_option(options: Any, flag: int) -> bool:
    """Clear an OpenSSL option bit a ``CertificateOptions`` sets; False if it cannot.

    25.5.0 and 26.10.0 ``_sslverify.OpenSSLCertificateOptions.__init__`` keeps
    the bits in ``self._options`` and ``_makeContext`` passes them to
    ``ctx.set_options`` when ``getContext`` first runs, so this must come before
    that.  pyOpenSSL has no ``Context.clear_options``: without ``_options`` the
    bit stays set.
    """
    bits = getattr(options, "_options", None)
    if not isinstance(bits, int) or getattr(options, "_context", None) is not None:
        log.warn(
            "cannot clear TLS option {flag:#x}: Twisted's CertificateOptions changed", flag=flag
        )
        return False
    options._options = bits & ~flag
    return True


__all__ = [
    "CHECKED_ON",
    "EpollParts",
    "Writer",
    "adopt_socket",
    "clear_option",
    "close_at_once",
    "epoll_parts",
    "listening_socket",
    "replace_iteration",
    "restore_iteration",
    "send_now_writer",
]
