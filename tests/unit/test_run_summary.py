"""Tests for tests/run.py's reading of trial's closing summary line."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.run import Summary, parse_trial_summary

PASSED_RUN = """\
tests.unit.test_x
  XTests
    test_a ...                                                             [OK]

-------------------------------------------------------------------------------
Ran 3 tests in 0.012s

PASSED (successes=3)
"""

FAILED_RUN = """\
[FAIL]
Traceback (most recent call last):
  ...
twisted.trial.unittest.FailTest: 1 != 2

tests.unit.test_x.XTests.test_b
-------------------------------------------------------------------------------
Ran 20 tests in 1.500s

FAILED (skips=2, expectedFailures=1, failures=3, errors=4, unexpectedSuccesses=5, successes=6)
"""


class ParseTrialSummaryTests(SynchronousTestCase):
    def test_passed(self) -> None:
        """PASSED (successes=N) gives N passed, 0 failed."""
        self.assertEqual(parse_trial_summary(PASSED_RUN), Summary(3, 0, 0, True))

    def test_failed_all_counts(self) -> None:
        """Failures, errors and unexpected successes fail; expected failures pass; skips skip."""
        self.assertEqual(parse_trial_summary(FAILED_RUN), Summary(7, 12, 2, False))

    def test_any_order_and_subset(self) -> None:
        """The counts may come in any order and any subset."""
        output = "Ran 4 tests\n\nFAILED (successes=1, errors=2, skips=1)\n"
        self.assertEqual(parse_trial_summary(output), Summary(1, 2, 1, False))

    def test_bare_passed(self) -> None:
        """A bare PASSED (no tests ran) gives 0 passed, 0 failed."""
        self.assertEqual(
            parse_trial_summary("Ran 0 tests in 0.001s\n\nPASSED\n"), Summary(0, 0, 0, True)
        )

    def test_no_summary(self) -> None:
        """Output without a summary line (trial crashed) gives None."""
        self.assertIsNone(
            parse_trial_summary("Traceback (most recent call last):\nImportError: x\n")
        )
        self.assertIsNone(parse_trial_summary(""))

    def test_last_summary_wins(self) -> None:
        """A PASSED printed earlier by a test does not hide the real closing line."""
        output = "PASSED (successes=99)\nRan 2 tests\n\nFAILED (failures=1, successes=1)\n"
        self.assertEqual(parse_trial_summary(output), Summary(1, 1, 0, False))

    def test_lookalike_line_ignored(self) -> None:
        """A line that only looks like a summary, such as test output, is not taken for one."""
        output = "FAILED (successes=2)\nPASSED (see above)\n"
        self.assertEqual(parse_trial_summary(output), Summary(2, 0, 0, False))

    def test_ansi_colour(self) -> None:
        """A colourised status word from a terminal reporter is still read."""
        output = "\x1b[1;32mPASSED\x1b[0m (successes=5)\r\n"
        self.assertEqual(parse_trial_summary(output), Summary(5, 0, 0, True))

    def test_line(self) -> None:
        """The closing line is 'N passed, N failed', with ', N skipped' only when skips > 0."""
        self.assertEqual(Summary(3, 1, 0, False).line(), "3 passed, 1 failed")
        self.assertEqual(Summary(3, 0, 2, True).line(), "3 passed, 0 failed, 2 skipped")
