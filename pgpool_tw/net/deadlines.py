"""Many timeouts of one length on one reactor timer.

Every client login (authentication_timeout) and every server reset (the pool's
reset timeout) arms a timeout that is nearly always cancelled a few hundred
microseconds later.  A ``reactor.callLater`` per timeout costs a DelayedCall, a
heap insertion on the next loop turn and a cancellation the reactor must later
sweep out of its heap.  Timeouts of one length expire in the order they were
started, so ``Deadlines`` keeps them in a deque and holds a single reactor timer
for the earliest live one: starting one is an append, cancelling one a flag.

Each timeout fires at the same moment a ``callLater`` of the same delay would
(never earlier; later only by what the reactor itself adds).  Cancelled entries
are swept out as they reach the front, or all at once when they outnumber the
live ones, so memory stays bounded by the live timeouts.  When the last live
timeout is cancelled the timer stays armed (re-arming it for the next login
would cost what was saved); it fires once, finds nothing due and stops.  Whoever
owns a ``Deadlines`` calls ``close`` when it stops, so no timer outlives it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

#: Cancelled entries tolerated in the queue before a sweep (when also over half of it).
_SWEEP_AT = 64


class Deadline:
    """One started timeout; ``cancel`` it when what it guards is done."""

    __slots__ = ("when", "call", "args", "_queue")

    def __init__(
        self, when: float, call: Callable[..., Any], args: tuple[Any, ...], queue: Deadlines
    ) -> None:
        self.when = when
        self.call: Optional[Callable[..., Any]] = call
        self.args = args
        self._queue = queue

    def active(self) -> bool:
        """Neither cancelled nor fired."""
        return self.call is not None

    def cancel(self) -> None:
        """Stop it from firing; harmless once cancelled or fired."""
        if self.call is not None:
            self.call = None
            self.args = ()
            self._queue._cancelled()


class Deadlines:
    """Timeouts of ``delay`` seconds on ``clock``, sharing one timer."""

    def __init__(self, clock: IReactorTime, delay: float) -> None:
        self.clock = clock
        self.delay = delay
        self._queue: deque[Deadline] = deque()
        self._live = 0
        self._timer: Optional[IDelayedCall] = None
        self._due = 0.0  # when the timer was set to fire
        self._firing = False

    def start(self, call: Callable[..., Any], *args: Any) -> Deadline:
        """Call ``call(*args)`` in ``delay`` seconds unless the result is cancelled first."""
        deadline = Deadline(self.clock.seconds() + self.delay, call, args, self)
        self._queue.append(deadline)
        self._live += 1
        if self._timer is None and not self._firing:
            self._schedule(deadline.when)
        return deadline

    def start_at(self, when: float, call: Callable[..., Any], *args: Any) -> Deadline:
        """Call ``call(*args)`` at ``when`` (at most ``delay`` from now: a timeout that
        began before its owner saw it, such as a client the C loop accepted)."""
        deadline = Deadline(when, call, args, self)
        queue = self._queue
        at = len(queue)
        while at and queue[at - 1].when > when:
            at -= 1  # kept in order of expiry: the few started late go in place
        queue.insert(at, deadline)
        self._live += 1
        if not self._firing and (self._timer is None or when < self._due):
            timer, self._timer = self._timer, None
            if timer is not None and timer.active():
                timer.cancel()
            self._schedule(when)
        return deadline

    def __len__(self) -> int:
        """Live timeouts (started, not cancelled, not fired)."""
        return self._live

    def _schedule(self, when: float) -> None:
        self._due = when
        self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._fire)

    def close(self) -> None:
        """Drop every timeout and the timer (the owner stops)."""
        for deadline in self._queue:
            deadline.call = None
            deadline.args = ()
        self._queue.clear()
        self._live = 0
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _cancelled(self) -> None:
        self._live -= 1
        if not self._live:
            self._queue.clear()  # the timer stays: see the module docstring
        elif len(self._queue) - self._live > max(_SWEEP_AT, self._live):
            live = [d for d in self._queue if d.call is not None]
            self._queue.clear()  # in place: _fire may be walking this deque
            self._queue.extend(live)

    def _fire(self) -> None:
        self._timer = None
        # The timer is due: what was due with it fires even if the clock's float
        # arithmetic lands a hair short of it.
        now = max(self.clock.seconds(), self._due)
        queue = self._queue
        self._firing = True  # a timeout started by a callback must not set the timer
        while queue:
            deadline = queue[0]
            call = deadline.call
            if call is not None and deadline.when > now:
                break
            queue.popleft()
            if call is None:
                continue
            args, deadline.call, deadline.args = deadline.args, None, ()
            self._live -= 1
            try:
                call(*args)
            except Exception:
                log.failure("timeout callback {call!r} failed", call=call)
        self._firing = False
        if queue:
            self._schedule(queue[0].when)
