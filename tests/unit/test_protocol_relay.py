"""Tests for pgpool_tw.protocol.relay: the SessionTracker follows both streams by headers.

Every property is checked with whole chunks, one byte at a time and with random cut
points: the tracker must reach the same state however the bytes are cut.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.protocol import messages
from pgpool_tw.protocol.messages import (
    IDLE,
    IN_FAILED_TRANSACTION,
    IN_TRANSACTION,
    cstring,
    message,
)
from pgpool_tw.protocol.relay import SessionTracker

INT16 = struct.Struct("!h").pack
INT32 = struct.Struct("!i").pack

# --- client messages ------------------------------------------------------------


def parse(sql: str, name: str = "") -> bytes:
    return message(b"P", cstring(name) + cstring(sql) + INT16(0))


def bind(statement: str = "", portal: str = "", *values: bytes) -> bytes:
    body = cstring(portal) + cstring(statement) + INT16(0) + INT16(len(values))
    body += b"".join(INT32(len(value)) + value for value in values)
    return message(b"B", body + INT16(0))


def describe(kind: bytes = b"P", name: str = "") -> bytes:
    return message(b"D", kind + cstring(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", cstring(portal) + INT32(max_rows))


def close(kind: bytes = b"S", name: str = "") -> bytes:
    return message(b"C", kind + cstring(name))


def sync() -> bytes:
    return message(b"S")


def flush() -> bytes:
    return message(b"H")


def function_call(oid: int, *args: bytes) -> bytes:
    body = INT32(oid) + INT16(0) + INT16(len(args))
    body += b"".join(INT32(len(arg)) + arg for arg in args)
    return message(b"F", body + INT16(0))


def copy_data(data: bytes) -> bytes:
    return message(b"d", data)


def copy_done() -> bytes:
    return message(b"c")


def copy_fail(reason: str) -> bytes:
    return message(b"f", cstring(reason))


# --- server messages ------------------------------------------------------------


def row_description(*names: str) -> bytes:
    body = INT16(len(names))
    for name in names:
        body += cstring(name) + INT32(0) + INT16(0) + INT32(25) + INT16(-1) + INT32(-1) + INT16(0)
    return message(b"T", body)


def data_row(*values: bytes) -> bytes:
    return message(b"D", INT16(len(values)) + b"".join(INT32(len(v)) + v for v in values))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstring(tag))


def parse_complete() -> bytes:
    return message(b"1")


def bind_complete() -> bytes:
    return message(b"2")


def no_data() -> bytes:
    return message(b"n")


def copy_in_response() -> bytes:
    return message(b"G", b"\0" + INT16(1) + INT16(0))


def notification(pid: int, channel: str, payload: str) -> bytes:
    return message(b"A", INT32(pid) + cstring(channel) + cstring(payload))


def function_call_response(value: bytes) -> bytes:
    return message(b"V", INT32(len(value)) + value)


ready = messages.ready_for_query
status_msg = messages.parameter_status


def error(text: str) -> bytes:
    return messages.error_response("42601", text, severity="ERROR")


# --- a realistic conversation ---------------------------------------------------


class State(NamedTuple):
    pending: int
    unsynced: bool
    status: int
    in_sync: bool


class Turn(NamedTuple):
    client: bytes
    server: bytes
    after: State  # the tracker's state once both sides of the turn are fed


def snapshot(tracker: SessionTracker) -> State:
    return State(tracker.pending, tracker.unsynced, tracker.status, tracker.in_sync)


def full_state(tracker: SessionTracker) -> tuple[object, ...]:
    """Everything public about the tracker, for comparing two feeds of the same bytes."""
    return (*snapshot(tracker), dict(tracker.params), tracker.server_at_boundary)


SYNCED_IDLE = State(0, False, IDLE, True)

TURNS: list[Turn] = [
    Turn(
        messages.query("SELECT 1"),
        row_description("?column?") + data_row(b"1") + command_complete("SELECT 1") + ready(IDLE),
        SYNCED_IDLE,
    ),
    Turn(
        messages.query("BEGIN"),
        command_complete("BEGIN") + ready(IN_TRANSACTION),
        State(0, False, IN_TRANSACTION, True),
    ),
    Turn(
        messages.query("SET TimeZone = 'UTC'"),
        command_complete("SET") + status_msg("TimeZone", "UTC") + ready(IN_TRANSACTION),
        State(0, False, IN_TRANSACTION, True),
    ),
    Turn(
        parse("SELECT $1::text", "s1") + bind("s1", "", b"hello") + describe() + execute() + sync(),
        parse_complete()
        + bind_complete()
        + row_description("text")
        + data_row(b"hello")
        + command_complete("SELECT 1")
        + ready(IN_TRANSACTION),
        State(0, False, IN_TRANSACTION, True),
    ),
    Turn(
        messages.query("SELEC oops"),
        error('syntax error at or near "SELEC"') + ready(IN_FAILED_TRANSACTION),
        State(0, False, IN_FAILED_TRANSACTION, True),
    ),
    Turn(
        messages.query("ROLLBACK"),
        command_complete("ROLLBACK") + ready(IDLE),
        SYNCED_IDLE,
    ),
    Turn(
        messages.query("COPY t FROM STDIN"),
        copy_in_response(),
        State(1, False, IDLE, False),
    ),
    Turn(
        copy_data(b"1\tone\n") + copy_data(b"2\ttwo\n" * 50) + copy_done(),
        command_complete("COPY 51") + ready(IDLE),
        SYNCED_IDLE,
    ),
    Turn(
        messages.query("COPY t FROM STDIN"),
        copy_in_response(),
        State(1, False, IDLE, False),
    ),
    Turn(
        copy_data(b"3\tthree\n") + copy_fail("client gave up"),
        error("COPY from stdin failed: client gave up") + ready(IDLE),
        SYNCED_IDLE,
    ),
    Turn(
        messages.query("LISTEN news"),
        command_complete("LISTEN") + ready(IDLE),
        SYNCED_IDLE,
    ),
    Turn(b"", notification(4242, "news", "hello"), SYNCED_IDLE),
    Turn(
        parse("SELECT 2") + bind() + execute() + flush(),
        parse_complete() + bind_complete() + data_row(b"2") + command_complete("SELECT 1"),
        State(0, True, IDLE, False),
    ),
    Turn(sync(), ready(IDLE), SYNCED_IDLE),
    Turn(
        function_call(1598, INT32(7)),
        function_call_response(b"0.42") + ready(IDLE),
        SYNCED_IDLE,
    ),
    Turn(
        parse("SELECT 3", "s3")
        + describe(b"S", "s3")
        + sync()
        + bind("s3")
        + execute()
        + sync()
        + close(b"S", "s3")
        + sync(),
        parse_complete()
        + no_data()
        + ready(IDLE)
        + bind_complete()
        + data_row(b"3")
        + command_complete("SELECT 1")
        + ready(IDLE)
        + message(b"3")
        + ready(IDLE),
        SYNCED_IDLE,
    ),
    Turn(
        messages.query("SET application_name = 'x'; SELECT 1"),
        command_complete("SET")
        + status_msg("application_name", "x")
        + data_row(b"1")
        + command_complete("SELECT 1")
        + ready(IDLE),
        SYNCED_IDLE,
    ),
]
FINAL_PARAMS = {"TimeZone": "UTC", "application_name": "x", "server_version": "17.0"}
CLIENT = b"".join(turn.client for turn in TURNS)
SERVER = b"".join(turn.server for turn in TURNS)
TERMINATE_AT = len(CLIENT)
CLIENT_WITH_TERMINATE = CLIENT + messages.terminate()
#: Query, Sync and FunctionCall messages in CLIENT, counted by hand: 9 + 5 + 1.
OWED = 15


def new_tracker() -> SessionTracker:
    return SessionTracker({"server_version": "17.0", "TimeZone": "GMT"})


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given positions (in any order, duplicates allowed)."""
    points = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def feed_client_chunks(tracker: SessionTracker, chunks: Sequence[bytes]) -> list[int]:
    """Feed client chunks until a Terminate is found; the return value of each call."""
    results = []
    for chunk in chunks:
        results.append(tracker.feed_client(chunk))
        if results[-1] >= 0:
            break
    return results


def feed_server_chunks(tracker: SessionTracker, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        tracker.feed_server(chunk)


def message_ends(data: bytes) -> list[int]:
    """The offset just past each whole message in ``data``."""
    return _ends([b"12345" + body for _, body in messages.MessageReader().feed(data)])


def local_cuts(cuts: Iterable[int], start: int, end: int) -> list[int]:
    """Global cut positions that fall inside [start, end), relative to start."""
    return [cut - start for cut in cuts if start < cut < end]


CUTS_CLIENT = st.lists(st.integers(min_value=0, max_value=len(CLIENT_WITH_TERMINATE)))
CUTS_SERVER = st.lists(st.integers(min_value=0, max_value=len(SERVER)))


class ConversationTests(SynchronousTestCase):
    """The whole conversation, turn by turn, however each stream is cut."""

    def run_turns(self, client_cuts: Iterable[int], server_cuts: Iterable[int]) -> None:
        """Feed every turn with the given global cut points, checking state after each."""
        client_cuts = list(client_cuts)
        server_cuts = list(server_cuts)
        tracker = new_tracker()
        params = tracker.params
        c_at = s_at = 0
        for number, turn in enumerate(TURNS):
            c_end, s_end = c_at + len(turn.client), s_at + len(turn.server)
            chunks = split_at(turn.client, local_cuts(client_cuts, c_at, c_end))
            self.assertEqual(feed_client_chunks(tracker, chunks), [-1] * len(chunks))
            feed_server_chunks(tracker, split_at(turn.server, local_cuts(server_cuts, s_at, s_end)))
            self.assertEqual(snapshot(tracker), turn.after, f"after turn {number}")
            self.assertTrue(tracker.server_at_boundary, f"after turn {number}")
            c_at, s_at = c_end, s_end
        self.assertIs(tracker.params, params)
        self.assertEqual(tracker.params, FINAL_PARAMS)

    def test_conversation_is_consistent(self) -> None:
        """The server stream holds one ReadyForQuery per owed client message."""
        kinds = [kind for kind, _ in messages.MessageReader().feed(SERVER)]
        self.assertEqual(kinds.count(messages.READY_FOR_QUERY), OWED)

    def test_whole_turns(self) -> None:
        """Each turn fed as one chunk per side gives the expected state after it."""
        self.run_turns([], [])

    def test_byte_by_byte(self) -> None:
        """Each turn fed one byte at a time gives the same states as whole chunks."""
        self.run_turns(range(len(CLIENT)), range(len(SERVER)))

    @given(CUTS_CLIENT, CUTS_SERVER)
    def test_random_cuts(self, client_cuts: list[int], server_cuts: list[int]) -> None:
        """Each turn cut at random points gives the same states as whole chunks."""
        self.run_turns(client_cuts, server_cuts)

    def test_message_by_message(self) -> None:
        """Every chunk boundary at a message boundary gives the same states."""
        self.run_turns(message_ends(CLIENT), message_ends(SERVER))


class WholeStreamTests(SynchronousTestCase):
    """The whole client stream first (a deep pipeline), then the whole server stream."""

    def feed_all(self, client_chunks: Sequence[bytes], server_chunks: Sequence[bytes]) -> None:
        tracker = new_tracker()
        results = feed_client_chunks(tracker, client_chunks)
        found_in = len(results) - 1
        self.assertEqual(results[:-1], [-1] * found_in)
        chunk_start = sum(len(chunk) for chunk in client_chunks[:found_in])
        header_split = any(TERMINATE_AT < end < TERMINATE_AT + 5 for end in _ends(client_chunks))
        if header_split:
            self.assertEqual(results[-1], 0)
        else:
            self.assertEqual(chunk_start + results[-1], TERMINATE_AT)
        self.assertEqual(tracker.pending, OWED)
        self.assertFalse(tracker.in_sync)
        feed_server_chunks(tracker, server_chunks)
        self.assertEqual(tracker.pending, 0)
        self.assertEqual(tracker.status, IDLE)
        self.assertEqual(tracker.params, FINAL_PARAMS)
        self.assertTrue(tracker.server_at_boundary)
        self.assertEqual(tracker.unsynced, header_split)
        self.assertEqual(tracker.in_sync, not header_split)

    def test_whole(self) -> None:
        """Both streams as single chunks: Terminate found at its offset, all settled."""
        self.feed_all([CLIENT_WITH_TERMINATE], [SERVER])

    def test_byte_by_byte(self) -> None:
        """Both streams byte by byte: the split Terminate header leaves the session unsynced."""
        self.feed_all(bytewise(CLIENT_WITH_TERMINATE), bytewise(SERVER))

    @given(CUTS_CLIENT, CUTS_SERVER)
    def test_random_cuts(self, client_cuts: list[int], server_cuts: list[int]) -> None:
        """Both streams cut at random points reach the same final state."""
        self.feed_all(split_at(CLIENT_WITH_TERMINATE, client_cuts), split_at(SERVER, server_cuts))

    @settings(max_examples=50)
    @given(CUTS_CLIENT, CUTS_SERVER)
    def test_states_match_bytewise(self, client_cuts: list[int], server_cuts: list[int]) -> None:
        """After every chunk, the public state equals the state reached byte by byte."""
        reference = new_tracker()
        client_states = [full_state(reference)]
        for byte in bytewise(CLIENT):
            reference.feed_client(byte)
            client_states.append(full_state(reference))
        server_states = [full_state(reference)]
        for byte in bytewise(SERVER):
            reference.feed_server(byte)
            server_states.append(full_state(reference))

        tracker = new_tracker()
        at = 0
        for chunk in split_at(CLIENT, client_cuts):
            self.assertEqual(tracker.feed_client(chunk), -1)
            at += len(chunk)
            self.assertEqual(full_state(tracker), client_states[at], f"client at {at}")
        at = 0
        for chunk in split_at(SERVER, server_cuts):
            tracker.feed_server(chunk)
            at += len(chunk)
            self.assertEqual(full_state(tracker), server_states[at], f"server at {at}")


def _ends(chunks: Sequence[bytes]) -> list[int]:
    ends, at = [], 0
    for chunk in chunks:
        at += len(chunk)
        ends.append(at)
    return ends


class TerminateTests(SynchronousTestCase):
    def test_terminate_offset_in_its_chunk(self) -> None:
        """feed_client returns the Terminate's offset within the chunk it lands in."""
        tracker = new_tracker()
        query = messages.query("SELECT 1")
        self.assertEqual(tracker.feed_client(query + messages.terminate()), len(query))
        self.assertEqual(tracker.pending, 1)

    def test_terminate_alone(self) -> None:
        """A Terminate at the start of a chunk is at offset 0 and leaves the session in sync."""
        tracker = new_tracker()
        self.assertEqual(tracker.feed_client(messages.terminate()), 0)
        self.assertTrue(tracker.in_sync)
        self.assertFalse(tracker.unsynced)

    def test_terminate_after_body_continuation(self) -> None:
        """A Terminate following the end of a message begun in an earlier chunk is found."""
        tracker = new_tracker()
        query = messages.query("SELECT 'a long query'")
        self.assertEqual(tracker.feed_client(query[:9]), -1)
        self.assertEqual(tracker.feed_client(query[9:] + messages.terminate()), len(query) - 9)

    def test_terminate_after_split_header(self) -> None:
        """A Terminate following a message whose header was cut is found at its offset."""
        tracker = new_tracker()
        query = messages.query("SELECT 1")
        self.assertEqual(tracker.feed_client(query[:3]), -1)
        self.assertEqual(tracker.feed_client(query[3:] + messages.terminate()), len(query) - 3)

    def test_terminate_header_split(self) -> None:
        """A Terminate cut inside its header returns 0 and leaves the session not in sync."""
        for cut in range(1, 5):
            tracker = new_tracker()
            x = messages.terminate()
            self.assertEqual(tracker.feed_client(x[:cut]), -1)
            self.assertFalse(tracker.in_sync)
            self.assertEqual(tracker.feed_client(x[cut:]), 0, cut)
            self.assertTrue(tracker.unsynced)
            self.assertFalse(tracker.in_sync, cut)

    def test_terminate_header_split_three_ways(self) -> None:
        """A Terminate header fed one byte at a time returns -1 until its last header byte."""
        tracker = new_tracker()
        results = [tracker.feed_client(byte) for byte in bytewise(messages.terminate())]
        self.assertEqual(results, [-1, -1, -1, -1, 0])
        self.assertFalse(tracker.in_sync)

    def test_no_terminate_returns_minus_one(self) -> None:
        """Chunks without a Terminate return -1, even when one holds an 'X' byte in a body."""
        tracker = new_tracker()
        self.assertEqual(tracker.feed_client(messages.query("X")), -1)
        self.assertEqual(tracker.feed_client(copy_data(b"X\x00\x00\x00\x04")), -1)
        self.assertEqual(tracker.feed_client(b""), -1)
        self.assertEqual(tracker.pending, 1)


class ClientCountingTests(SynchronousTestCase):
    def test_pending_counts_query_sync_function_call(self) -> None:
        """Query, Sync and FunctionCall each add one to pending; other messages do not."""
        tracker = new_tracker()
        tracker.feed_client(messages.query("SELECT 1"))
        self.assertEqual(tracker.pending, 1)
        tracker.feed_client(parse("SELECT 1") + bind() + describe() + execute() + flush())
        self.assertEqual(tracker.pending, 1)
        tracker.feed_client(sync())
        self.assertEqual(tracker.pending, 2)
        tracker.feed_client(function_call(1598))
        self.assertEqual(tracker.pending, 3)
        tracker.feed_client(copy_data(b"x") + copy_done() + copy_fail("no"))
        self.assertEqual(tracker.pending, 3)

    def test_ready_for_query_decrements_pending(self) -> None:
        """Each ReadyForQuery pays back one pending message, never going below zero."""
        tracker = new_tracker()
        tracker.feed_client(messages.query("SELECT 1") + messages.query("SELECT 2"))
        tracker.feed_server(ready(IDLE))
        self.assertEqual(tracker.pending, 1)
        tracker.feed_server(ready(IDLE))
        self.assertEqual(tracker.pending, 0)
        tracker.feed_server(ready(IDLE))
        self.assertEqual(tracker.pending, 0)

    def test_unsynced_set_by_extended_messages(self) -> None:
        """Parse, Bind, Describe, Execute, Close and Flush each leave the session unsynced."""
        for raw in (parse("SELECT 1"), bind(), describe(), execute(), close(), flush()):
            tracker = new_tracker()
            tracker.feed_client(raw)
            self.assertTrue(tracker.unsynced, raw[:1])
            self.assertFalse(tracker.in_sync)
            tracker.feed_client(sync())
            self.assertFalse(tracker.unsynced, raw[:1])

    def test_unsynced_not_set_by_copy_messages(self) -> None:
        """CopyData, CopyDone and CopyFail do not leave the session unsynced."""
        tracker = new_tracker()
        tracker.feed_client(copy_data(b"a\n") + copy_done() + copy_fail("x"))
        self.assertFalse(tracker.unsynced)
        self.assertTrue(tracker.in_sync)

    def test_query_does_not_clear_unsynced(self) -> None:
        """A simple Query after unsynced extended messages does not count as a Sync."""
        tracker = new_tracker()
        tracker.feed_client(parse("SELECT 1") + messages.query("SELECT 2"))
        self.assertTrue(tracker.unsynced)

    def test_sync_in_same_chunk_clears(self) -> None:
        """Extended messages followed by Sync in one chunk end synced with one pending."""
        tracker = new_tracker()
        tracker.feed_client(parse("SELECT 1") + bind() + execute() + sync())
        self.assertEqual((tracker.pending, tracker.unsynced), (1, False))

    def test_counted_when_header_complete(self) -> None:
        """A Query is counted once its header is in, and the session is mid-message after."""
        tracker = new_tracker()
        query = messages.query("SELECT 1")
        tracker.feed_client(query[:5])
        self.assertEqual(tracker.pending, 1)
        self.assertFalse(tracker.in_sync)
        tracker.feed_client(query[5:])
        self.assertEqual(tracker.pending, 1)


class ServerTests(SynchronousTestCase):
    def test_status_follows_last_ready_for_query(self) -> None:
        """status is the state byte of the last ReadyForQuery in a chunk."""
        tracker = new_tracker()
        self.assertEqual(tracker.status, IDLE)
        tracker.feed_server(ready(IN_TRANSACTION) + ready(IN_FAILED_TRANSACTION))
        self.assertEqual(tracker.status, IN_FAILED_TRANSACTION)
        tracker.feed_server(ready(IDLE) + ready(IN_TRANSACTION))
        self.assertEqual(tracker.status, IN_TRANSACTION)

    def test_initial_status(self) -> None:
        """A tracker starts with the status it is given."""
        self.assertEqual(SessionTracker({}, IN_TRANSACTION).status, IN_TRANSACTION)

    def test_parameter_status_updates_shared_dict(self) -> None:
        """ParameterStatus updates the params dict the tracker was given, in place."""
        params = {"TimeZone": "GMT"}
        tracker = SessionTracker(params)
        tracker.feed_server(status_msg("TimeZone", "UTC") + status_msg("DateStyle", "ISO, MDY"))
        self.assertEqual(params, {"TimeZone": "UTC", "DateStyle": "ISO, MDY"})

    def test_parameter_status_split_everywhere(self) -> None:
        """A ParameterStatus cut at every position updates the dict exactly when complete."""
        raw = status_msg("application_name", "billing")
        for cut in range(1, len(raw)):
            params: dict[str, str] = {}
            tracker = SessionTracker(params)
            tracker.feed_server(raw[:cut])
            self.assertEqual(params, {}, cut)
            self.assertFalse(tracker.server_at_boundary, cut)
            self.assertFalse(tracker.in_sync, cut)
            tracker.feed_server(raw[cut:] + ready(IN_TRANSACTION))
            self.assertEqual(params, {"application_name": "billing"}, cut)
            self.assertEqual(tracker.status, IN_TRANSACTION, cut)
            self.assertTrue(tracker.server_at_boundary)

    def test_ready_for_query_split_everywhere(self) -> None:
        """A ReadyForQuery cut at every position sets the status exactly when complete."""
        raw = ready(IN_FAILED_TRANSACTION)
        for cut in range(1, len(raw)):
            tracker = new_tracker()
            tracker.feed_client(messages.query("x"))
            tracker.feed_server(raw[:cut])
            self.assertEqual((tracker.status, tracker.pending), (IDLE, 1), cut)
            tracker.feed_server(raw[cut:])
            self.assertEqual((tracker.status, tracker.pending), (IN_FAILED_TRANSACTION, 0))
            self.assertTrue(tracker.in_sync)

    def test_malformed_parameter_status_ignored(self) -> None:
        """A ParameterStatus body that does not parse is skipped without raising."""
        params: dict[str, str] = {}
        tracker = SessionTracker(params)
        tracker.feed_server(message(b"S", b"only-a-name\0") + ready(IN_TRANSACTION))
        self.assertEqual(params, {})
        self.assertEqual(tracker.status, IN_TRANSACTION)
        self.assertTrue(tracker.server_at_boundary)

    def test_server_at_boundary(self) -> None:
        """server_at_boundary is false exactly while a server message is partly fed."""
        tracker = new_tracker()
        row = data_row(b"abc")
        ends = set(_ends([row, notification(1, "c", "p"), status_msg("a", "b"), ready(IDLE)]))
        stream = row + notification(1, "c", "p") + status_msg("a", "b") + ready(IDLE)
        for at, byte in enumerate(bytewise(stream), 1):
            tracker.feed_server(byte)
            self.assertEqual(tracker.server_at_boundary, at in ends, at)

    def test_partial_server_message_not_in_sync(self) -> None:
        """A server message cut mid-way keeps the session out of sync with nothing pending."""
        tracker = new_tracker()
        note = notification(1, "news", "x")
        tracker.feed_server(note[:7])
        self.assertEqual(tracker.pending, 0)
        self.assertFalse(tracker.in_sync)
        tracker.feed_server(note[7:])
        self.assertTrue(tracker.in_sync)

    def test_partial_client_message_not_in_sync(self) -> None:
        """A client CopyData cut mid-way (header or body) keeps the session out of sync."""
        raw = copy_data(b"row\n")
        for cut in range(1, len(raw)):
            tracker = new_tracker()
            tracker.feed_client(raw[:cut])
            self.assertFalse(tracker.in_sync, cut)
            tracker.feed_client(raw[cut:])
            self.assertTrue(tracker.in_sync, cut)


class LargeMessageTests(SynchronousTestCase):
    def assertSmallBuffers(self, tracker: SessionTracker) -> None:
        self.assertLessEqual(len(tracker._s_body), 5)
        self.assertLessEqual(len(tracker._s_head), 5)
        self.assertLessEqual(len(tracker._c_head), 5)

    def test_large_data_row_streamed(self) -> None:
        """A 1 MB DataRow in 1000 chunks is followed without buffering its body."""
        tracker = new_tracker()
        tracker.feed_client(messages.query("SELECT big"))
        row = data_row(b"r" * (1 << 20))
        stream = row + command_complete("SELECT 1") + ready(IN_TRANSACTION)
        step = len(row) // 1000 + 1
        chunks = [stream[i : i + step] for i in range(0, len(stream), step)]
        self.assertGreaterEqual(len(chunks), 1000)
        for chunk in chunks[:-1]:
            tracker.feed_server(chunk)
            self.assertSmallBuffers(tracker)
            self.assertFalse(tracker.in_sync)
        tracker.feed_server(chunks[-1])
        self.assertSmallBuffers(tracker)
        self.assertEqual((tracker.pending, tracker.status), (0, IN_TRANSACTION))
        self.assertTrue(tracker.in_sync)

    def test_large_copy_data_streamed(self) -> None:
        """A 1 MB CopyData in 1000 chunks is followed without buffering its body."""
        tracker = new_tracker()
        stream = copy_data(b"c" * (1 << 20)) + copy_done()
        step = len(stream) // 1000 + 1
        for i in range(0, len(stream), step):
            self.assertEqual(tracker.feed_client(stream[i : i + step]), -1)
            self.assertSmallBuffers(tracker)
        self.assertTrue(tracker.in_sync)

    def test_only_status_bodies_buffered(self) -> None:
        """Byte by byte, only a ParameterStatus or ReadyForQuery body is ever held."""
        tracker = new_tracker()
        stream = data_row(b"x" * 100) + status_msg("k", "v" * 50) + data_row(b"y" * 100)
        status_span = range(len(data_row(b"x" * 100)), len(stream) - len(data_row(b"y" * 100)))
        for at, byte in enumerate(bytewise(stream)):
            tracker.feed_server(byte)
            if at not in status_span:
                self.assertSmallBuffers(tracker)
        self.assertEqual(tracker.params["k"], "v" * 50)


# --- random message sequences against a whole-message model ---------------------

CLIENT_POOL = [
    messages.query("SELECT 1"),
    parse("SELECT $1", "p"),
    bind("p", "", b"v"),
    describe(),
    execute(),
    close(),
    flush(),
    sync(),
    function_call(1598),
    copy_data(b"data\n"),
    copy_done(),
    copy_fail("why"),
    message(b"d", b""),
]
SERVER_POOL = [
    row_description("a", "b"),
    data_row(b"1", b"two"),
    data_row(),
    command_complete("SELECT 1"),
    notification(7, "ch", "payload"),
    copy_in_response(),
    parse_complete(),
    error("bad"),
    status_msg("TimeZone", "Europe/Paris"),
    status_msg("application_name", ""),
    ready(IDLE),
    ready(IN_TRANSACTION),
    ready(IN_FAILED_TRANSACTION),
]


def model(client: list[bytes], server: list[bytes]) -> tuple[int, bool, int, dict[str, str]]:
    """What the tracker should know, computed from whole messages."""
    pending, unsynced, status, params = 0, False, IDLE, {"server_version": "17.0"}
    for raw in client:
        kind = raw[:1]
        if kind in (b"Q", b"F"):
            pending += 1
        elif kind == b"S":
            pending += 1
            unsynced = False
        elif kind not in (b"d", b"c", b"f"):
            unsynced = True
    for raw in server:
        kind, body = messages.MessageReader().feed(raw)[0]
        if kind == messages.READY_FOR_QUERY:
            status = body[0]
            pending = max(0, pending - 1)
        elif kind == messages.PARAMETER_STATUS:
            name, value = messages.parse_parameter_status(body)
            params[name] = value
    return pending, unsynced, status, params


@st.composite
def sessions(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], list[int], list[int]]:
    client = draw(st.lists(st.sampled_from(CLIENT_POOL), max_size=30))
    server = draw(st.lists(st.sampled_from(SERVER_POOL), max_size=30))
    c_len = sum(map(len, client)) + 5
    s_len = sum(map(len, server))
    c_cuts = draw(st.lists(st.integers(min_value=0, max_value=c_len), max_size=40))
    s_cuts = draw(st.lists(st.integers(min_value=0, max_value=s_len), max_size=40))
    return client, server, c_cuts, s_cuts


class RandomSessionTests(SynchronousTestCase):
    @given(sessions())
    def test_matches_model(
        self, session: tuple[list[bytes], list[bytes], list[int], list[int]]
    ) -> None:
        """Random client and server messages, randomly cut, end in the model's state."""
        client, server, c_cuts, s_cuts = session
        stream = b"".join(client)
        tracker = SessionTracker({"server_version": "17.0"})
        chunks = split_at(stream + messages.terminate() + messages.query("after"), c_cuts)
        results = feed_client_chunks(tracker, chunks)
        ends = _ends(chunks)
        found_in = len(results) - 1
        self.assertEqual(results[:-1], [-1] * found_in)
        split = any(len(stream) < end < len(stream) + 5 for end in ends)
        start = ends[found_in - 1] if found_in else 0
        self.assertEqual(start + results[-1], start if split else len(stream))
        feed_server_chunks(tracker, split_at(b"".join(server), s_cuts))
        pending, unsynced, status, params = model(client, server)
        self.assertEqual(tracker.pending, pending)
        self.assertEqual(tracker.unsynced, unsynced or split)
        self.assertEqual(tracker.status, status)
        self.assertEqual(tracker.params, params)
        self.assertTrue(tracker.server_at_boundary)
        self.assertEqual(tracker.in_sync, pending == 0 and not unsynced and not split)

    @given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200)))
    def test_garbage_never_raises(self, data: bytes, cuts: list[int]) -> None:
        """Hostile bytes, however cut, never make either direction raise."""
        tracker = new_tracker()
        for chunk in split_at(data, cuts):
            tracker.feed_server(chunk)
        for chunk in split_at(data, cuts):
            if tracker.feed_client(chunk) >= 0:
                break


class CounterTests(SynchronousTestCase):
    """Queries, transactions and bytes as PgBouncer's SHOW STATS means them."""

    def run_session(self, client: bytes, server: bytes, cuts: Iterable[int] = ()) -> SessionTracker:
        tracker = new_tracker()
        cuts = list(cuts)
        feed_client_chunks(tracker, split_at(client, cuts))
        feed_server_chunks(tracker, split_at(server, cuts))
        return tracker

    def counts(self, tracker: SessionTracker) -> tuple[int, int, int, int]:
        return (tracker.queries, tracker.xacts, tracker.bytes_in, tracker.bytes_out)

    def test_autocommit_statement_is_one_query_and_one_transaction(self) -> None:
        """A Query answered with an idle ReadyForQuery counts one query and one transaction."""
        client = messages.query("select 1")
        server = command_complete("SELECT 1") + ready(IDLE)
        tracker = self.run_session(client, server)
        self.assertEqual(self.counts(tracker), (1, 1, len(client), len(server)))

    def test_explicit_transaction_is_one_transaction(self) -> None:
        """BEGIN, a statement and COMMIT: three queries, one transaction (ended at COMMIT)."""
        client = messages.query("begin") + messages.query("select 1") + messages.query("commit")
        server = (
            command_complete("BEGIN")
            + ready(IN_TRANSACTION)
            + command_complete("SELECT 1")
            + ready(IN_TRANSACTION)
            + command_complete("COMMIT")
            + ready(IDLE)
        )
        for cuts in ([], range(len(server))):
            tracker = self.run_session(client, server, cuts)
            self.assertEqual(self.counts(tracker)[:2], (3, 1))

    def test_open_transaction_is_not_counted_yet(self) -> None:
        """A transaction still open (or failed, not rolled back) counts its queries only."""
        client = messages.query("begin") + messages.query("oops")
        server = (
            command_complete("BEGIN")
            + ready(IN_TRANSACTION)
            + error("syntax")
            + ready(IN_FAILED_TRANSACTION)
        )
        self.assertEqual(self.counts(self.run_session(client, server))[:2], (2, 0))

    def test_extended_batch_is_one_query(self) -> None:
        """Parse, Bind, Execute, Sync is one query, counted at its ReadyForQuery."""
        client = parse("select 1") + bind() + execute() + sync()
        server = parse_complete() + bind_complete() + command_complete("SELECT 1") + ready(IDLE)
        tracker = self.run_session(client, server, range(0, len(server), 3))
        self.assertEqual(self.counts(tracker), (1, 1, len(client), len(server)))

    def test_unasked_ready_for_query_is_not_a_query(self) -> None:
        """A ReadyForQuery nobody asked for (nothing pending) counts nothing."""
        tracker = self.run_session(b"", ready(IDLE))
        self.assertEqual(self.counts(tracker)[:2], (0, 0))

    def test_take_counts_returns_and_zeroes(self) -> None:
        """take_counts hands each count out once: the second take is all zero."""
        client = messages.query("select 1") + messages.terminate()
        server = command_complete("SELECT 1") + ready(IDLE)
        tracker = self.run_session(client, server)
        self.assertEqual(tracker.take_counts(), (1, 1, len(client), len(server)))
        self.assertEqual(tracker.take_counts(), (0, 0, 0, 0))
        tracker.feed_client(messages.query("select 2"))
        self.assertEqual(tracker.take_counts(), (0, 0, len(messages.query("select 2")), 0))

    def test_whole_conversation_counts_every_answer(self) -> None:
        """The realistic conversation: one query per owed ReadyForQuery, however it is cut."""
        for cuts in ([], range(len(SERVER))):
            tracker = self.run_session(CLIENT, SERVER, cuts)
            self.assertEqual(tracker.queries, OWED)
            self.assertEqual((tracker.bytes_in, tracker.bytes_out), (len(CLIENT), len(SERVER)))
