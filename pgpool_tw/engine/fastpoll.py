"""A leaner epoll loop iteration for the process that runs the pooler.

Twisted's epoll reactor wraps every ready descriptor's doRead/doWrite in
``log.callWithLogger`` (a context push and pop, to prefix log lines with the
protocol's name) and asks each selectable for its ``fileno()`` first.  For a
relay that handles two read events per transaction that is a measurable share
of its CPU.  ``install`` replaces the reactor's ``doIteration`` with the same
loop minus those two steps for plain read events; anything else (writes,
hang-ups, errors) still goes through Twisted's own ``_doReadOrWrite``.  The
reactor's private parts are reached through ``pgpool_tw.net.twisted_private``.

Where the C extension ``pgpool_tw.engine._speedups`` is built (CPython on Linux), the
iteration itself is C: the sockets of attached sessions registered with
``start_relay`` are forwarded without entering Python at all (receive, header
walk, send), and every other event comes back to the loop below as from
``select.epoll``.  ``PGPOOL_TW_PURE_PYTHON=1`` in the environment turns the C
parts off (for comparison and debugging).

Only ``twistd pgpool`` installs it: an application embedding the pooler keeps
its reactor as it is, and its sessions are relayed by Twisted's own path.
"""

from __future__ import annotations

import errno
import math
import select
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from pgpool_tw.engine.speedups import speedups as _speedups
from pgpool_tw.net import twisted_private
from pgpool_tw.net.transport import plain_socket
from pgpool_tw.protocol.relay import SessionTracker

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import Lane, Relay, Router, TxClient, TxLane, TxServer

log = Logger()

#: The longest wait epoll_wait takes in one call (ms): a C int.
_MAX_WAIT_MS = 2**31 - 1

#: The reactor whose iteration forwards registered relays itself, if any, and its parts.
_pumping_reactor: Any = None
_pumping_parts: Optional[twisted_private.EpollParts] = None


def c_loop_available() -> bool:
    """The C iteration can be installed (the extension is built and not turned off)."""
    return _speedups is not None


def install(reactor: Any) -> bool:
    """Swap in the lean iteration when ``reactor`` is Twisted's epoll reactor."""
    global _pumping_reactor, _pumping_parts
    parts = twisted_private.epoll_parts(reactor)
    if parts is None:
        return False
    selectables = parts.selectables
    slow = parts.read_or_write
    disconnect = parts.disconnect
    readable = select.EPOLLIN
    poll = _c_poll(parts.poller) if _speedups is not None else parts.poller.poll

    def do_poll(timeout: Optional[float]) -> None:
        try:
            events = poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if event != readable:
                slow(selectable, fd, event)
                continue
            try:
                why = selectable.doRead()
            except BaseException:
                why = sys.exc_info()[1]
                log.failure("unhandled error in {selectable!r}", selectable=selectable)
            if why:
                disconnect(selectable, why, True)

    if not twisted_private.replace_iteration(reactor, do_poll):
        return False
    if _speedups is not None:
        _pumping_reactor = reactor
        _pumping_parts = parts
    return True


def uninstall(reactor: Any) -> None:
    """Give ``reactor`` its own iteration back (tests install and remove the loop)."""
    global _pumping_reactor, _pumping_parts
    twisted_private.restore_iteration(reactor)
    if _pumping_reactor is reactor:
        _pumping_reactor = None
        _pumping_parts = None


def relay_writes(reactor: Any) -> set[int]:
    """The fds ``reactor`` waits to write, for a C ``Relay``; only where the C loop runs.

    A ``Relay`` sends past Twisted only while its peer's fd is not in this set
    (nothing queued), so there is no stand-in: raises when the loop is elsewhere.
    """
    if _pumping_parts is None or reactor is not _pumping_reactor:
        raise RuntimeError("the C iteration does not run on this reactor")
    return _pumping_parts.writes


def _c_poll(poller: Any) -> Callable[[float, int], list[tuple[int, int]]]:
    """``poller.poll``'s signature (a negative timeout waits forever), answered in C."""
    assert _speedups is not None
    epfd = poller.fileno()
    cpoll = _speedups.poll

    def poll(timeout: float, maxevents: int) -> list[tuple[int, int]]:
        # select.epoll rounds a timeout up to whole milliseconds too.
        ms = -1 if timeout < 0 else min(math.ceil(timeout * 1000), _MAX_WAIT_MS)
        return cpoll(epfd, ms, maxevents)

    return poll


def start_relay(
    reactor: Any,
    tracker: SessionTracker,
    client: Any,
    server: Any,
    on_terminate: Callable[[bytes], None],
) -> Optional[Relay]:
    """Let the C iteration forward this session's chunks; None when it cannot.

    It cannot when the loop is not installed on ``reactor``, the tracker is the
    Python one, or either leg is not a plain socket (TLS is Twisted's to relay).
    The caller keeps feeding its own ``dataReceived`` path: Twisted still calls
    it whenever the C loop hands an event back.
    """
    if _speedups is None or reactor is not _pumping_reactor:
        return None
    if not isinstance(tracker, _speedups.SessionTracker):  # a test's Python tracker
        return None
    if not (plain_socket(client) and plain_socket(server)):
        return None
    client_fd, server_fd = client.fileno(), server.fileno()
    if client_fd < 0 or server_fd < 0 or _pumping_parts is None:
        return None
    writes = _pumping_parts.writes
    relay = _speedups.Relay(tracker, client, server, client_fd, server_fd, on_terminate, writes)
    _speedups.register(client_fd, relay, 0)
    _speedups.register(server_fd, relay, 1)
    return relay


def start_router(
    reactor: Any,
    client: Any,
    legs: tuple[Any, Optional[Any]],
    shapes: dict[bytes, int],
    on_data: tuple[
        Callable[[bytes], object], Callable[[bytes], object], Optional[Callable[[bytes], object]]
    ],
    on_adopt: Callable[[int, int, int], object],
) -> Optional[Router]:
    """Let the C iteration route a routed session's plain statements itself (see
    engine/_route.c); None when it cannot (no C loop on ``reactor``, TLS, a closed
    socket).  ``legs``: the primary's transport and the load-balancing one's (or None);
    ``on_data``: Python's callbacks for chunks of the client and of each leg."""
    if _speedups is None or reactor is not _pumping_reactor or _pumping_parts is None:
        return None
    transports = (client, legs[0], legs[1])
    fds = []
    for transport in transports:
        if transport is None:
            fds.append(-1)
            continue
        if not plain_socket(transport) or transport.fileno() < 0:
            return None
        fds.append(transport.fileno())
    router = _speedups.Router(
        tuple(fds), transports, _pumping_parts.writes, shapes, on_data, on_adopt
    )
    for side, fd in enumerate(fds):
        if fd >= 0:
            _speedups.register_router(fd, router, side)
            _router_fds[(router, side)] = fd
    return router


def stop_router(router: Router, side: Optional[int] = None) -> None:
    """Hand one socket (``side`` 0: the client, 1, 2: the legs) or all of them back to
    Twisted; the router never touches them again."""
    for each in (0, 1, 2) if side is None else (side,):
        router.forget(each)
        _router_fds.pop((router, each), None)


#: The fd of each socket a router was given and not yet made to forget (tests read it).
_router_fds: dict[tuple[Router, int], int] = {}


def new_lane(
    reactor: Any,
    on_miss: Callable[[int, int, bytes, int, float], None],
    on_event: Callable[[int, Optional[Relay], Any], None],
) -> Optional[Lane]:
    """A ``Lane`` for warm logins (see warm.py) on the C iteration; None without one."""
    if _speedups is None or reactor is not _pumping_reactor or _pumping_parts is None:
        return None
    return _speedups.Lane(_pumping_parts.poller.fileno(), on_miss, on_event)


def new_tx_lane(
    reactor: Any, shapes: dict[bytes, int], on_event: Callable[[int, TxServer], None]
) -> Optional[TxLane]:
    """A ``TxLane`` (transaction pooling's servers of one pool key on the C loop, see
    engine/_txlane.c); None without the C loop on ``reactor``."""
    if _speedups is None or reactor is not _pumping_reactor or _pumping_parts is None:
        return None
    return _speedups.TxLane(shapes, _pumping_parts.writes, on_event)


def tx_server(backend: Any, tag: int) -> Optional[TxServer]:
    """``backend`` as a lane may lend it; None when its socket is not a plain one (TLS)."""
    if _speedups is None:
        return None
    transport = backend.transport
    if transport is None or not plain_socket(transport) or transport.fileno() < 0:
        return None
    return _speedups.TxServer(backend, transport, transport.fileno(), tag)


def tx_client(
    lane: TxLane,
    client: Any,
    on_data: Callable[[bytes], object],
    on_adopt: Callable[[TxServer, int, bytes, int], object],
    expired: Callable[[], object],
) -> Optional[TxClient]:
    """A transaction-mode client on ``lane``: its socket's events go to the lane (which
    hands Twisted those of a disarmed client); None for a TLS client."""
    if _speedups is None or not plain_socket(client) or client.fileno() < 0:
        return None
    return _speedups.TxClient(lane, client, client.fileno(), on_data, on_adopt, expired)


def stop_relay(relay: Relay) -> None:
    """Hand both sockets back to Twisted's path (safe after either was closed)."""
    assert _speedups is not None
    client_fd, server_fd = relay.fds
    _speedups.unregister(client_fd, relay)
    _speedups.unregister(server_fd, relay)
