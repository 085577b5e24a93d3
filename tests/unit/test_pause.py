"""session/pause.py: the databases PAUSE holds and the sessions RESUME lets go."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.session.pause import Pause


class PauseTests(SynchronousTestCase):
    def test_nothing_paused_at_first(self) -> None:
        pause = Pause()
        self.assertFalse(pause.active)
        self.assertFalse(pause.paused("shop"))

    def test_one_database(self) -> None:
        """PAUSE shop holds shop's sessions only; RESUME shop lets them go in order."""
        pause, ran = Pause(), []
        pause.pause("shop")
        self.assertTrue(pause.paused("shop"))
        self.assertFalse(pause.paused("mail"))
        pause.hold("shop", lambda: ran.append(1))
        pause.hold("shop", lambda: ran.append(2))
        self.assertEqual(ran, [])
        self.assertIsNone(pause.resume("shop"))
        self.assertEqual(ran, [1, 2])
        self.assertFalse(pause.active)
        self.assertEqual(pause.waiting, 0)

    def test_everything_and_a_named_resume(self) -> None:
        """After PAUSE (all), RESUME db is refused; RESUME resumes all."""
        pause, ran = Pause(), []
        pause.pause(None)
        self.assertTrue(pause.paused("anything"))
        pause.hold("a", lambda: ran.append("a"))
        self.assertIsNotNone(pause.resume("a"))
        self.assertEqual(ran, [])
        self.assertIsNone(pause.resume(None))
        self.assertEqual(ran, ["a"])

    def test_resuming_one_keeps_the_others_held(self) -> None:
        pause, ran = Pause(), []
        pause.pause("a")
        pause.pause("b")
        pause.hold("a", lambda: ran.append("a"))
        pause.hold("b", lambda: ran.append("b"))
        self.assertIsNone(pause.resume("b"))
        self.assertEqual(ran, ["b"])
        self.assertTrue(pause.paused("a"))
        self.assertEqual(pause.waiting, 1)

    def test_resume_of_what_is_not_paused(self) -> None:
        pause = Pause()
        self.assertIsNotNone(pause.resume(None))
        pause.pause("a")
        self.assertIsNotNone(pause.resume("b"))
