"""The header walkers agree with Python's framer on the same streams, cut anywhere.

Three readers frame PostgreSQL messages by their 5-byte headers: ``MessageReader``
(whole messages, for logins and the pooler's own queries), the session trackers of the
relay (``protocol/relay.py`` and its C twin ``_tracker.c``, which walk headers only) and
the reset reply (``protocol/reset_reply.py`` and ``_reset.c``).  C and Python are
compared with each other in ``test_speedups.py`` and ``test_reset_reply.py``; here each
is held to the framer (``wire_oracles``):

* the trackers find the framer's boundaries (a server stream is at a boundary exactly
  where the framer ends a message) and kinds (ReadyForQuery statuses, ParameterStatus
  values, the Query/Sync/FunctionCall count, the Terminate's offset), for every cut;
* on a length the framer refuses (under 4, or above ``MAX_FRAMED_LENGTH``), the reset
  reply refuses too (FAILED: the server is not reused), in both languages.  The
  trackers do not judge lengths (the server judges them and closes): they agree with
  the framer up to the refused header, and with each other after it
  (``test_speedups.DifferentialTests.test_random_bytes``).  Past a length under 4 the
  walk differs with the cuts (a header cut by a chunk takes such a length as 4, a whole
  one steps 1 + length): the session is then one the server closes, never reused.
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.reset_reply import FAILED, MAX_MESSAGE, ResetReply
from tests.unit import wire_oracles as oracles
from tests.unit.wire_strategies import ABSURD_LENGTHS, CUTS, HOSTILE_MESSAGES, MESSAGES

SOME = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SKIP_C = "pgpool_tw.engine._speedups is not built (or PGPOOL_TW_PURE_PYTHON is set)"

#: A conversation's worth of both directions, to walk one byte at a time.
CONVERSATION = (
    m.query("select 1")
    + m.message(b"P", b"\0select $1\0\0\0")
    + m.message(b"B", b"\0\0\0\0\0\0\0\0")
    + m.message(b"S")
    + m.message(b"T", b"\0\x01a\0" + b"\0" * 18)
    + m.message(b"D", b"\0\x01\0\0\0\x011")
    + m.parameter_status("TimeZone", "UTC")
    + m.ready_for_query(m.IN_TRANSACTION)
    + m.message(b"Z")
    + m.message(b"S", b"bad\0")
    + m.message(b"d", b"x" * 300)
    + m.terminate()
    + m.query("after the terminate")
)


def _tracker_tests(make: Callable[..., Any], name: str, doc: str) -> type[SynchronousTestCase]:
    """The tests of one tracker against the framer (a class per tracker: hypothesis
    wants each test function to run under one class only)."""

    class TrackerTests(SynchronousTestCase):
        __doc__ = doc

        def both(self, stream: bytes, cuts: list[int]) -> None:
            oracles.check_tracker_server(make, stream, cuts)
            oracles.check_tracker_client(make, stream, cuts)

        @SOME
        @given(MESSAGES, CUTS)
        def test_well_framed_streams(self, stream: bytes, cuts: list[int]) -> None:
            """Valid streams cut anywhere: the framer's boundaries and kinds, both ways."""
            self.both(stream, cuts)

        @SOME
        @given(HOSTILE_MESSAGES, CUTS)
        def test_mutated_streams(self, stream: bytes, cuts: list[int]) -> None:
            """Mutated streams: the framer's boundaries and kinds up to a refused length."""
            self.both(stream, cuts)

        @FEW
        @given(MESSAGES, st.sampled_from(ABSURD_LENGTHS), st.binary(max_size=16), CUTS)
        def test_absurd_length_after_valid_messages(
            self, head: bytes, length: int, tail: bytes, cuts: list[int]
        ) -> None:
            """Valid messages, then a header with any length: agreement up to it; a
            length above the framer's limit is walked on (the relay has no limit)."""
            self.both(head + b"D" + length.to_bytes(4, "big") + tail, cuts)

        def test_a_conversation_one_byte_at_a_time(self) -> None:
            """Both directions of a conversation fed byte by byte, and whole."""
            for cuts in (list(range(len(CONVERSATION))), []):
                self.both(CONVERSATION, cuts)

        def test_the_terminate_is_found_where_the_framer_puts_it(self) -> None:
            """The walk stops at the Terminate's offset, as the framer counts it."""
            tracker = make({}, m.IDLE, ())
            offset = CONVERSATION.index(m.terminate() + m.query("after the terminate"))
            self.assertEqual(tracker.feed_client(CONVERSATION), offset)

    TrackerTests.__name__ = TrackerTests.__qualname__ = name
    return TrackerTests


PythonTrackerTests = _tracker_tests(
    SessionTracker, "PythonTrackerTests", "Python's tracker (protocol/relay.py) against the framer."
)
CTrackerTests = _tracker_tests(
    speedups.SessionTracker if speedups is not None else SessionTracker,
    "CTrackerTests",
    "The C tracker (_tracker.c) against the framer.",
)
CTrackerTests.skip = None if speedups is not None else SKIP_C


# -- the reset reply's verdict on a refused length ---------------------------------------


def _verdicts(stream: bytes, cuts: list[int]) -> list[int]:
    """The reset reply's last verdict, Python's and (when built) C's, fed ``stream`` cut."""
    readers: list[Any] = [ResetReply(1, {})]
    if speedups is not None:
        readers.append(speedups.ResetReply(speedups.SessionTracker({}, m.IDLE), 1))
    verdicts = []
    for reader in readers:
        verdict = 0
        for chunk in oracles.split_at(stream, cuts):
            verdict = int(reader.feed(chunk))
        verdicts.append(verdict)
    return verdicts


#: The server's messages a reset reply reads before its ReadyForQuery.
BEFORE_READY = st.lists(
    st.sampled_from(
        [
            m.message(b"C", b"DISCARD ALL\0"),
            m.parameter_status("application_name", "x"),
            m.message(b"N", b"SNOTICE\0\0"),
        ]
    ),
    max_size=4,
).map(b"".join)


class ResetVerdictTests(SynchronousTestCase):
    """A length the framer refuses is FAILED for the reset reply, in C and Python."""

    @SOME
    @given(
        BEFORE_READY,
        st.sampled_from([n for n in ABSURD_LENGTHS if n < 4 or n > m.MAX_FRAMED_LENGTH]),
        st.binary(max_size=12),
        CUTS,
    )
    def test_a_refused_length_fails_the_reset(
        self, head: bytes, length: int, tail: bytes, cuts: list[int]
    ) -> None:
        """Before the ReadyForQuery owed, a refused header makes every reader give up."""
        stream = head + b"C" + length.to_bytes(4, "big") + tail + m.ready_for_query(m.IDLE)
        self.assertIsNotNone(oracles.frame([stream]).error)
        self.assertEqual(set(_verdicts(stream, cuts)), {FAILED})

    @SOME
    @given(HOSTILE_MESSAGES, CUTS)
    def test_mutated_streams(self, stream: bytes, cuts: list[int]) -> None:
        """Where the framer refuses a length before any ReadyForQuery, the reset fails;
        C and Python give the same verdict on every stream."""
        verdicts = _verdicts(stream, cuts)
        self.assertEqual(len(set(verdicts)), 1, verdicts)
        frames = oracles.reference_frames(stream)
        if frames.bad_at is not None and not any(
            kind == m.READY_FOR_QUERY for _, kind, _ in frames.messages
        ):
            self.assertEqual(verdicts[0], FAILED)

    def test_the_limits(self) -> None:
        """The reset reply's limit is tighter than the framer's: a reset answer never
        holds a message over 64 KiB, so such a header already fails it."""
        self.assertLess(MAX_MESSAGE, m.MAX_FRAMED_LENGTH)
        stream = b"D" + (MAX_MESSAGE + 1).to_bytes(4, "big") + b"x"
        self.assertIsNone(oracles.frame([stream]).error)
        self.assertEqual(set(_verdicts(stream, [])), {FAILED})
