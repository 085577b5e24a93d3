"""A leaner epoll loop iteration for the process that runs the pooler.

Twisted's epoll reactor wraps every ready descriptor's doRead/doWrite in
``log.callWithLogger`` (a context push and pop, to prefix log lines with the
protocol's name) and asks each selectable for its ``fileno()`` first.  For a
relay that handles two read events per transaction that is a measurable share
of its CPU.  ``install`` replaces the reactor's ``doIteration`` with the same
loop minus those two steps for plain read events; anything else (writes,
hang-ups, errors) still goes through Twisted's own ``_doReadOrWrite``.
Only ``twistd pgpool`` installs it: an application embedding the pooler keeps
its reactor as it is.
"""

from __future__ import annotations

import errno
import select
import sys
from typing import Any, Optional

from twisted.logger import Logger

log = Logger()


def install(reactor: Any) -> bool:
    """Swap in the lean iteration when ``reactor`` is Twisted's epoll reactor."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return False
    if not isinstance(reactor, EPollReactor):
        return False
    poll = reactor._poller.poll
    selectables = reactor._selectables
    slow = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    readable = select.EPOLLIN

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

    reactor.doIteration = do_poll  # type: ignore[method-assign]
    return True
