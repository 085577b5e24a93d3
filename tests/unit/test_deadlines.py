"""Tests for pgpool_tw.net.deadlines: many equal timeouts on one reactor timer."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.net.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.deadlines = Deadlines(self.clock, 10.0)
        self.fired: list[object] = []

    def test_fires_after_the_delay_not_before(self) -> None:
        """A timeout fires exactly when a callLater of the same delay would."""
        self.deadlines.start(self.fired.append, "a")
        self.clock.advance(9.999)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.001)
        self.assertEqual(self.fired, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_timer_for_many(self) -> None:
        """Any number of live timeouts hold a single reactor timer."""
        for i in range(100):
            self.deadlines.start(self.fired.append, i)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(len(self.deadlines), 100)

    def test_each_fires_at_its_own_time(self) -> None:
        """Timeouts started at different times fire at their own deadlines, in order."""
        self.deadlines.start(self.fired.append, "a")
        self.clock.advance(3)
        self.deadlines.start(self.fired.append, "b")
        self.clock.advance(7)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(2.9)
        self.assertEqual(self.fired, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["a", "b"])

    def test_cancelled_never_fires(self) -> None:
        """A cancelled timeout does not fire; the others still do."""
        first = self.deadlines.start(self.fired.append, "a")
        self.deadlines.start(self.fired.append, "b")
        first.cancel()
        self.assertFalse(first.active())
        self.clock.advance(10)
        self.assertEqual(self.fired, ["b"])

    def test_timer_stops_after_all_cancelled(self) -> None:
        """With every timeout cancelled, the timer fires once at most, then none is left."""
        started = [self.deadlines.start(self.fired.append, i) for i in range(5)]
        for deadline in started:
            deadline.cancel()
        self.assertEqual(len(self.deadlines), 0)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_started_after_all_cancelled_fires_on_time(self) -> None:
        """A timeout started while the timer is still set for a cancelled one fires on time."""
        self.deadlines.start(self.fired.append, "cancelled").cancel()
        self.clock.advance(4)
        self.deadlines.start(self.fired.append, "later")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(6)
        self.assertEqual(self.fired, [])
        self.clock.advance(3.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["later"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_drops_everything(self) -> None:
        """close() cancels the timer; nothing fires and cancelling afterwards is harmless."""
        started = self.deadlines.start(self.fired.append, "a")
        self.deadlines.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(started.active())
        started.cancel()
        self.assertEqual(len(self.deadlines), 0)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])

    def test_cancel_twice_and_after_firing_is_harmless(self) -> None:
        """cancel() on a fired or cancelled timeout changes nothing."""
        fired = self.deadlines.start(self.fired.append, "a")
        other = self.deadlines.start(self.fired.append, "b")
        self.clock.advance(10)
        self.assertFalse(fired.active())
        fired.cancel()
        other.cancel()
        other.cancel()
        self.assertEqual(self.fired, ["a", "b"])
        self.assertEqual(len(self.deadlines), 0)

    def test_cancelled_entries_are_swept(self) -> None:
        """Cancelled timeouts do not pile up while a long-lived one stays live."""
        self.deadlines.start(self.fired.append, "keeper")
        for i in range(10_000):
            self.deadlines.start(self.fired.append, i).cancel()
        self.assertLess(len(self.deadlines._queue), 200)
        self.clock.advance(10)
        self.assertEqual(self.fired, ["keeper"])

    def test_callback_may_start_and_cancel(self) -> None:
        """A callback may cancel a timeout due with it and start a new one."""
        doomed: list[object] = []

        def first() -> None:
            self.fired.append("first")
            doomed[0].cancel()  # type: ignore[attr-defined]
            self.deadlines.start(self.fired.append, "started by first")

        self.deadlines.start(first)
        doomed.append(self.deadlines.start(self.fired.append, "due with first"))
        self.clock.advance(10)
        self.assertEqual(self.fired, ["first"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9.9)
        self.assertEqual(self.fired, ["first"])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, ["first", "started by first"])

    def test_failing_callback_does_not_stop_the_rest(self) -> None:
        """A callback that raises is logged; timeouts due with it still fire."""

        def boom() -> None:
            raise RuntimeError("boom")

        self.deadlines.start(boom)
        self.deadlines.start(self.fired.append, "b")
        self.clock.advance(10)
        self.assertEqual(self.fired, ["b"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
