"""Tests for pgpool_tw.engine._speedups' SessionTracker: the same rules as the Python one.

Every test of tests/unit/test_protocol_relay.py runs again with the C tracker, and
both trackers are fed the same random streams with the same random cuts and must
agree on every return value and every public state after every chunk.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import select
import socket
import sys
from typing import Any, Callable

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.engine.tracker import Tracker
from pgpool_tw.protocol import messages
from pgpool_tw.protocol.relay import LOCAL_WORDS, SessionTracker, log2_bucket
from tests.unit import test_protocol_relay as base
from tests.unit.wire_oracles import public_state

SKIP = (
    "pgpool_tw.engine._speedups is not built (or PGPOOL_TW_PURE_PYTHON is set)"
    if not speedups
    else ""
)


def _relay_tests_on_c() -> Any:
    """A second copy of the relay tests' module whose SessionTracker is the C one.

    A copy (not subclasses) so that hypothesis sees distinct test functions.
    """
    spec = importlib.util.spec_from_file_location(__name__ + "_relay_on_c", base.__file__)
    assert spec is not None and spec.loader is not None and speedups is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SessionTracker = speedups.SessionTracker  # type: ignore[attr-defined]
    return module


def _c_cases() -> dict[str, type]:
    """Each relay test class again, named C<name>, when the extension is built."""
    if speedups is None:
        return {}
    on_c = _relay_tests_on_c()
    cases = {}
    for name in dir(on_c):
        case = getattr(on_c, name)
        if isinstance(case, type) and issubclass(case, SynchronousTestCase):
            cases["C" + name] = type("C" + name, (case,), {"__module__": __name__})
    return cases


globals().update(_c_cases())


ANY_MESSAGE = st.builds(
    messages.message,
    st.sampled_from([b"Q", b"S", b"F", b"X", b"d", b"c", b"f", b"P", b"B", b"E", b"Z", b"D"]),
    st.binary(max_size=12),
)
STATUS = st.builds(
    lambda name, value: messages.message(b"S", name + b"\0" + value + b"\0"),
    st.binary(max_size=6).filter(lambda b: b"\0" not in b),
    st.binary(max_size=6),  # may hold a NUL: a malformed ParameterStatus, ignored by both
)
READY = st.builds(lambda s: messages.message(b"Z", s), st.sampled_from([b"I", b"T", b"E", b""]))
#: Query texts around the watch words: whitespace, cases, words cut short, near misses.
WATCHED = st.builds(
    lambda space, word, rest: messages.message(b"Q", space + word + rest + b"\0"),
    st.sampled_from([b"", b" ", b"\n\t ", b"\r\x0b\x0c", b"\x00", b"/* */ "]),
    st.sampled_from(
        [b"show", b"SHOW", b"sHoW", b"pgpool", b"PGPool", b"sho", b"pgpoo", b"select", b"p", b""]
    ),
    st.sampled_from([b" pool_nodes", b"", b"x", b" set a = 1;", b"\xff"]),
)
STREAM = st.lists(st.one_of(ANY_MESSAGE, STATUS, READY, WATCHED), max_size=25).map(b"".join)
NOISE = st.binary(max_size=120)  # not messages at all: lengths of anything
CUTS = st.lists(st.integers(min_value=0, max_value=400), max_size=30)


class DifferentialTests(SynchronousTestCase):
    """The C tracker and the Python tracker agree after every chunk."""

    skip = SKIP or None

    def compare(self, client: bytes, server: bytes, c_cuts: list[int], s_cuts: list[int]) -> None:
        assert speedups is not None
        py = SessionTracker({"server_version": "15"}, messages.IDLE, LOCAL_WORDS)
        c = speedups.SessionTracker({"server_version": "15"}, messages.IDLE, LOCAL_WORDS)
        client_chunks = base.split_at(client, c_cuts)
        server_chunks = base.split_at(server, s_cuts)
        for step in range(max(len(client_chunks), len(server_chunks))):
            if step < len(server_chunks):
                py.feed_server(server_chunks[step])
                c.feed_server(server_chunks[step])
            chunk = client_chunks[step] if step < len(client_chunks) else b""
            while chunk:
                at = c.feed_client(chunk)
                self.assertEqual(at, py.feed_client(chunk))
                self.assertEqual(c.local, py.local)
                if at < 0 or not c.local:
                    break
                # As the glue does with a Query it does not answer: on to the server.
                size = max(1 + int.from_bytes(chunk[at + 1 : at + 5], "big"), 5)
                sent = min(size, len(chunk) - at)
                c.pass_query(size, sent)
                py.pass_query(size, sent)
                chunk = chunk[at + sent :]
            self.assertEqual(public_state(c), public_state(py), f"after chunk {step}")
            self.assertEqual(
                (c._c_head, c._s_head, c._s_body), (py._c_head, py._s_head, py._s_body)
            )
            if step % 3 == 2:  # a harvest between chunks must not change what follows
                self.assertEqual(c.take_counts(), py.take_counts(), f"after chunk {step}")
                # Query time: timed at the same moments (busy periods ended), so equal
                # counts of observations; the durations themselves differ.
                self.assertEqual(
                    sum(c.take_times()[1]), sum(py.take_times()[1]), f"after chunk {step}"
                )

    @settings(max_examples=300)
    @given(STREAM, STREAM, CUTS, CUTS)
    # A Query whose last byte (the NUL's place) completes a watched word: Python's walk
    # read that byte as text, C's did not (found by this test, issue #20).
    @example(b"Q\x00\x00\x00\npgpool", b"", [], [])
    def test_random_messages(
        self, client: bytes, server: bytes, c_cuts: list[int], s_cuts: list[int]
    ) -> None:
        """Random well-framed streams, randomly cut: the same results and states."""
        self.compare(client, server, c_cuts, s_cuts)

    @settings(max_examples=300)
    @given(NOISE, NOISE, CUTS, CUTS)
    def test_random_bytes(
        self, client: bytes, server: bytes, c_cuts: list[int], s_cuts: list[int]
    ) -> None:
        """Hostile bytes with any lengths, randomly cut: the same results and states."""
        self.compare(client, server, c_cuts, s_cuts)

    def test_byte_by_byte_conversation(self) -> None:
        """The relay tests' whole conversation one byte at a time: the same states."""
        self.compare(
            base.CLIENT_WITH_TERMINATE,
            base.SERVER,
            list(range(len(base.CLIENT_WITH_TERMINATE))),
            list(range(len(base.SERVER))),
        )

    def test_undecodable_parameter_value(self) -> None:
        """A value that is not UTF-8 is kept with surrogate escapes, as in Python."""
        body = messages.message(b"S", b"name\0\xff\xfe\0")
        self.compare(b"", body, [], [])

    def test_rejects_what_is_not_bytes(self) -> None:
        """A str chunk is a TypeError, not a crash."""
        assert speedups is not None
        tracker = speedups.SessionTracker({})
        self.assertRaises(TypeError, tracker.feed_client, "Q")
        self.assertRaises(TypeError, tracker.feed_server, 1)
        self.assertRaises(TypeError, speedups.SessionTracker, [])


class Log2BucketTests(SynchronousTestCase):
    """The histograms' bucket rule, in C and in Python."""

    skip = SKIP or None

    @settings(max_examples=300)
    @given(st.floats(min_value=-1.0, max_value=1e7, allow_nan=False))
    def test_c_and_python_agree(self, seconds: float) -> None:
        assert speedups is not None
        self.assertEqual(speedups.log2_bucket(seconds), log2_bucket(seconds))

    def test_bounds(self) -> None:
        """Bucket k holds [2^(k-1), 2^k) us; under 1 us is 0; the last takes the rest."""
        cases = {0.0: 0, 5e-7: 0, 1e-6: 1, 1.9e-6: 1, 2e-6: 2, 3e-6: 2, 4e-6: 3, 1.0: 20}
        for seconds, bucket in cases.items():
            self.assertEqual(log2_bucket(seconds), bucket, seconds)
        self.assertEqual(log2_bucket(1e9), 31)

    def test_query_time_of_a_busy_period(self) -> None:
        """One observation per busy period: a pipeline of three queries answered
        counts once, when the last ReadyForQuery leaves nothing owed."""
        for tracker in (SessionTracker({}), speedups.SessionTracker({})):  # type: ignore[union-attr]
            tracker.feed_client(messages.query("select 1") * 3)
            tracker.feed_server(base.ready(messages.IDLE) * 2)
            self.assertEqual(sum(tracker.take_times()[1]), 0)
            tracker.feed_server(base.ready(messages.IDLE))
            seconds, buckets = tracker.take_times()
            self.assertEqual((sum(buckets), tracker.queries), (1, 3))
            self.assertGreaterEqual(seconds, 0.0)


class BuildTests(SynchronousTestCase):
    def test_sessions_use_the_c_tracker_on_cpython(self) -> None:
        """On CPython/Linux the extension is built and sessions use its tracker."""
        if platform.python_implementation() != "CPython" or not sys.platform.startswith("linux"):
            raise self.skipTest("the extension is only built for CPython on Linux")
        if os.environ.get("PGPOOL_TW_PURE_PYTHON"):
            raise self.skipTest("PGPOOL_TW_PURE_PYTHON is set")
        if SKIP:
            self.fail("pgpool_tw.engine._speedups did not build: is a C compiler installed?")
        assert speedups is not None
        self.assertIs(Tracker, speedups.SessionTracker)


class FakeTransport:
    """Stands in for a Twisted transport: only ``write`` is called, for what the kernel
    did not take."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class PollTests(SynchronousTestCase):
    """poll() forwards registered sockets' chunks and leaves everything else to Twisted."""

    skip = SKIP or None

    def setUp(self) -> None:
        assert speedups is not None
        self.ep = select.epoll()
        self.addCleanup(self.ep.close)
        # client <-> [pooler: c, s] <-> server
        self.client, self.c = socket.socketpair()
        self.s, self.server = socket.socketpair()
        for sock in (self.client, self.c, self.s, self.server):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        for sock in (self.c, self.s):
            self.ep.register(sock.fileno(), select.EPOLLIN)
        self.tracker = speedups.SessionTracker({})
        self.ct, self.st = FakeTransport(), FakeTransport()
        self.writes: set[int] = set()
        self.terminated: list[bool] = []
        self.on_terminate: Callable[[], None] = lambda: self.terminated.append(True)
        self.relay = speedups.Relay(
            self.tracker,
            self.ct,
            self.st,
            self.c.fileno(),
            self.s.fileno(),
            lambda rest: self.on_terminate(),
            self.writes,
        )
        speedups.register(self.c.fileno(), self.relay, 0)
        speedups.register(self.s.fileno(), self.relay, 1)
        self.addCleanup(speedups.unregister, self.c.fileno(), self.relay)
        self.addCleanup(speedups.unregister, self.s.fileno(), self.relay)

    def poll(self) -> list[tuple[int, int]]:
        assert speedups is not None
        return speedups.poll(self.ep.fileno(), 100, 8)

    def test_both_directions_forwarded(self) -> None:
        """A query goes to the server and its answer to the client, tracked, in C."""
        self.client.send(messages.query("select 1"))
        self.assertEqual(self.poll(), [])
        self.assertEqual(self.server.recv(100), messages.query("select 1"))
        self.assertEqual((self.tracker.pending, self.relay.received), (1, 1))
        self.server.send(base.ready(messages.IN_TRANSACTION))
        self.assertEqual(self.poll(), [])
        self.assertEqual(self.client.recv(100), base.ready(messages.IN_TRANSACTION))
        self.assertEqual((self.tracker.pending, self.tracker.status), (0, messages.IN_TRANSACTION))

    def test_peer_with_queued_writes_left_to_twisted(self) -> None:
        """While Twisted waits to write to the server, the client's bytes stay unread."""
        self.writes.add(self.s.fileno())
        self.client.send(messages.query("select 1"))
        self.assertEqual(self.poll(), [(self.c.fileno(), select.EPOLLIN)])
        self.assertEqual(self.tracker.pending, 0)
        self.assertEqual(self.c.recv(100), messages.query("select 1"))

    def test_terminate_stops_forwarding(self) -> None:
        """Bytes before a Terminate go on; the Terminate does not, and on_terminate runs."""
        self.client.send(messages.query("select 1") + messages.terminate())
        self.assertEqual(self.poll(), [])
        self.assertEqual(self.server.recv(100), messages.query("select 1"))
        self.assertEqual(self.terminated, [True])

    def test_clients_bytes_forwarded_before_servers_answers(self) -> None:
        """In one batch the client's bytes go first, though the server's were ready first.

        epoll lists ready sockets in the order they became ready, so the server's answer
        heads the batch; poll() still forwards the client's bytes (here a Terminate, whose
        on_terminate shows the moment) before it sends any answer on.
        """
        answer_seen_at_terminate: list[bytes] = []

        def on_terminate() -> None:
            with contextlib.suppress(BlockingIOError):
                answer_seen_at_terminate.append(self.client.recv(100))
            self.terminated.append(True)

        self.on_terminate = on_terminate
        self.server.send(base.ready(messages.IDLE))
        self.client.send(messages.terminate())
        self.assertEqual(self.poll(), [])
        self.assertEqual((answer_seen_at_terminate, self.terminated), ([], [True]))
        self.assertEqual(self.client.recv(100), base.ready(messages.IDLE))

    def test_watched_query_stops_forwarding(self) -> None:
        """A Query that may be pgpool-II's stops the walk: what came before goes on, the
        rest goes to on_terminate with the tracker's ``local`` set."""
        assert speedups is not None
        tracker = speedups.SessionTracker({}, messages.IDLE, LOCAL_WORDS)
        rests: list[bytes] = []
        relay = speedups.Relay(
            tracker, self.ct, self.st, self.c.fileno(), self.s.fileno(), rests.append, set()
        )
        speedups.register(self.c.fileno(), relay, 0)
        speedups.register(self.s.fileno(), relay, 1)
        show = messages.query("  show pool_nodes") + messages.terminate()
        self.client.send(messages.query("SELECT 1") + show)
        self.assertEqual(self.poll(), [])
        self.assertEqual(self.server.recv(100), messages.query("SELECT 1"))
        self.assertEqual((rests, tracker.local, tracker.pending), ([show], True, 1))

    def test_end_of_file_left_to_twisted(self) -> None:
        """A client's end of file is Twisted's to notice: its read event comes back."""
        self.client.shutdown(socket.SHUT_WR)
        self.assertEqual(self.poll(), [(self.c.fileno(), select.EPOLLIN)])

    def test_short_send_rest_to_transport_write(self) -> None:
        """What the kernel does not take goes to the peer transport's write, in order."""
        chunk = base.data_row(b"x" * 60000)
        sent = b""
        while not self.ct.written:  # the client reads nothing until the kernel is full
            with contextlib.suppress(BlockingIOError):
                sent += chunk[: self.server.send(chunk)]
            self.poll()
        received = b""
        with contextlib.suppress(BlockingIOError):
            while part := self.client.recv(1 << 20):
                received += part
        total = received + b"".join(self.ct.written)
        self.assertGreater(len(received), 0)
        self.assertEqual(total, sent[: len(total)])

    def test_unregistered_socket_left_to_twisted(self) -> None:
        """After unregister, the socket's events are Twisted's again."""
        assert speedups is not None
        speedups.unregister(self.c.fileno(), self.relay)
        self.client.send(b"Q")
        self.assertEqual(self.poll(), [(self.c.fileno(), select.EPOLLIN)])


class MalformedLengthTests(SynchronousTestCase):
    """A length under 4 in a header cut across chunks never sends either tracker back
    before the header (the C one would read outside its buffer)."""

    def check(self, tracker_type: Any) -> None:
        tracker = tracker_type({})
        # "Q" with length 0, its header cut after 4 bytes, then a whole Query.
        self.assertEqual(tracker.feed_client(b"Q\0\0\0"), -1)
        self.assertEqual(tracker.feed_client(b"\0" + messages.query("x")), -1)
        self.assertEqual(tracker.pending, 2)
        tracker.feed_server(b"Z\0\0")
        tracker.feed_server(b"\0\0" + base.ready(messages.IN_TRANSACTION))
        tracker.feed_server(b"S\0\0\0")
        tracker.feed_server(b"\x01" + base.ready(messages.IDLE))
        self.assertEqual((tracker.pending, tracker.status), (0, messages.IDLE))
        self.assertTrue(tracker.server_at_boundary)

    def test_python_tracker(self) -> None:
        """The Python tracker steps past the header."""
        self.check(SessionTracker)

    def test_c_tracker(self) -> None:
        """The C tracker steps past the header, as the Python one."""
        if speedups is None:
            raise self.skipTest(SKIP)
        self.check(speedups.SessionTracker)


class MisuseTests(SynchronousTestCase):
    """Objects made without their constructor arguments raise instead of crashing."""

    skip = SKIP or None

    def test_tracker_made_by_new_alone(self) -> None:
        """A SessionTracker made by __new__ has empty params and follows streams."""
        assert speedups is not None
        tracker = speedups.SessionTracker.__new__(speedups.SessionTracker)
        tracker.feed_server(base.status_msg("a", "b") + base.ready(messages.IDLE))
        self.assertEqual((tracker.params, tracker.status), ({"a": "b"}, messages.IDLE))

    def test_relay_made_by_new_alone_not_registered(self) -> None:
        """register() refuses a Relay that was never initialised."""
        assert speedups is not None
        relay = speedups.Relay.__new__(speedups.Relay)
        self.assertRaises(ValueError, speedups.register, 0, relay, 0)
