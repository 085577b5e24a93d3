"""The reset's answer (protocol/reset_reply.py), and the C twin (engine/_reset.c) agreeing.

The rule is held in both languages because the warm lane resets servers without
Python; every case below runs on both, and hypothesis feeds both the same
random streams cut at random points.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.reset_reply import CLEAN, FAILED, MAX_MESSAGE, MORE, ResetReply
from tests.unit.test_protocol_relay import split_at

READY = m.ready_for_query(m.IDLE)
DONE = m.message(b"C", b"DISCARD ALL\0")
STATUS = m.parameter_status("application_name", "x")


class PythonReply:
    """The Python reader, with the interface both readers share here."""

    def __init__(self, owed: int, params: dict[str, str]) -> None:
        self.reply = ResetReply(owed, params)

    def feed(self, data: bytes) -> int:
        return self.reply.feed(data)

    def state(self) -> tuple[int, dict[str, str]]:
        return self.reply.status, dict(self.reply.params)


class CReply:
    """The C reader (_speedups.ResetReply), which records into a C tracker."""

    def __init__(self, owed: int, params: dict[str, str]) -> None:
        assert speedups is not None
        self.tracker = speedups.SessionTracker(params, m.IDLE)
        self.reply: Any = speedups.ResetReply(self.tracker, owed)

    def feed(self, data: bytes) -> int:
        return int(self.reply.feed(data))

    def state(self) -> tuple[int, dict[str, str]]:
        return self.tracker.status, dict(self.tracker.params)


class PythonRuleTests(SynchronousTestCase):
    """The rule, case by case (run again on the C reader below)."""

    make: Any = PythonReply

    def verdict(self, data: bytes, owed: int = 2, one_byte_at_a_time: bool = False) -> int:
        reply = self.make(owed, {})
        chunks = [data[i : i + 1] for i in range(len(data))] if one_byte_at_a_time else [data]
        verdict = MORE
        for chunk in chunks:
            verdict = reply.feed(chunk)
        return verdict

    def test_clean_answer(self) -> None:
        """Every ReadyForQuery owed, idle, no error: clean, whole or byte by byte."""
        data = DONE + READY + DONE + READY
        self.assertEqual(self.verdict(data), CLEAN)
        self.assertEqual(self.verdict(data, one_byte_at_a_time=True), CLEAN)

    def test_more_owed(self) -> None:
        """Until the last ReadyForQuery owed arrives, the answer is not over."""
        self.assertEqual(self.verdict(DONE + READY + DONE), MORE)

    def test_error_fails_but_reading_goes_on(self) -> None:
        """An ErrorResponse fails the batch, which still ends at the last ReadyForQuery."""
        reply = self.make(2, {})
        self.assertEqual(reply.feed(m.error_response("42000", "no") + READY), MORE)
        self.assertEqual(reply.feed(READY), FAILED)

    def test_copy_start_fails_at_once(self) -> None:
        """CopyInResponse, CopyOutResponse or CopyBothResponse: failed without waiting."""
        for kind in (b"G", b"H", b"W"):
            self.assertEqual(self.verdict(m.message(kind, b"\0\0\0"), owed=1), FAILED)

    def test_not_idle_fails(self) -> None:
        """The last ReadyForQuery must report idle."""
        self.assertEqual(self.verdict(READY + m.ready_for_query(m.IN_TRANSACTION)), FAILED)

    def test_bytes_after_the_last_ready_for_query_fail(self) -> None:
        """A server that says more than it was asked is not reused."""
        self.assertEqual(self.verdict(READY + READY + STATUS), FAILED)
        self.assertEqual(self.verdict(READY + READY + b"N"), FAILED)

    def test_bad_length_fails(self) -> None:
        """A length under 4 or over the limit cannot be framed: failed."""
        self.assertEqual(self.verdict(b"C\0\0\0\3" + READY + READY), FAILED)
        self.assertEqual(self.verdict(b"C" + m.UINT32.pack(MAX_MESSAGE + 1)), FAILED)

    def test_parameter_status_recorded_and_empty_ready_is_idle(self) -> None:
        """ParameterStatus updates the parameters; an empty ReadyForQuery body counts as idle."""
        reply = self.make(1, {"a": "1"})
        self.assertEqual(reply.feed(STATUS + m.message(b"Z", b"")), CLEAN)
        self.assertEqual(reply.state(), (m.IDLE, {"a": "1", "application_name": "x"}))

    def test_verdict_repeated_after_the_end(self) -> None:
        """Once decided, more bytes change nothing."""
        reply = self.make(1, {})
        self.assertEqual(reply.feed(READY), CLEAN)
        self.assertEqual(reply.feed(m.error_response("42000", "late") + READY), CLEAN)


SKIP = None if speedups is not None else "pgpool_tw.engine._speedups is not built"


class CRuleTests(PythonRuleTests):
    """The same cases on the C reader."""

    skip = SKIP
    make = CReply


MESSAGE = st.one_of(
    st.builds(
        m.message,
        st.sampled_from([b"C", b"E", b"N", b"A", b"G", b"H", b"W", b"1", b"T", b"D"]),
        st.binary(max_size=10),
    ),
    st.builds(
        lambda name, value: m.message(b"S", name + b"\0" + value + b"\0"),
        st.binary(max_size=5).filter(lambda b: b"\0" not in b),
        st.binary(max_size=5),  # may hold a NUL: malformed, ignored by both
    ),
    st.builds(lambda s: m.message(b"Z", s), st.sampled_from([b"I", b"I", b"T", b"E", b""])),
)
STREAM = st.lists(MESSAGE, max_size=12).map(b"".join)
NOISE = st.binary(max_size=60)
CUTS = st.lists(st.integers(min_value=0, max_value=200), max_size=12)


class AgreementTests(SynchronousTestCase):
    """Python's and C's readers agree after every chunk of any stream."""

    skip = SKIP

    def compare(self, data: bytes, cuts: list[int], owed: int) -> None:
        py = PythonReply(owed, {"a": "1"})
        c = CReply(owed, {"a": "1"})
        for step, chunk in enumerate(split_at(data, cuts)):
            self.assertEqual(c.feed(chunk), py.feed(chunk), f"chunk {step}")
            self.assertEqual(c.state(), py.state(), f"chunk {step}")

    @settings(max_examples=400)
    @given(STREAM, CUTS, st.integers(min_value=1, max_value=4))
    def test_random_messages(self, data: bytes, cuts: list[int], owed: int) -> None:
        """Random framed answers, randomly cut: the same verdicts, status and parameters."""
        self.compare(data, cuts, owed)

    @settings(max_examples=200)
    @given(STREAM, NOISE, CUTS, st.integers(min_value=1, max_value=3))
    def test_messages_then_noise(
        self, data: bytes, noise: bytes, cuts: list[int], owed: int
    ) -> None:
        """Framed messages followed by bytes of any length fields: the same outcomes."""
        self.compare(data + noise, cuts, owed)
