"""What the protocol room's parsers must do with any bytes, cut anywhere: the oracles.

One statement of each property, used by the hypothesis tests
(``test_protocol_properties.py``, ``test_walker_agreement.py``) and by the atheris
targets (``fuzz/``), so a crash the fuzzer finds is a failure of the same check a unit
test makes.  Each ``check_*`` takes a byte stream and cut points and raises
AssertionError when a property fails; any other exception out of it is a parser's
exception escaping, which is the bug being looked for.

The properties:

* every parser either parses or rejects with ``ProtocolViolation`` (the SQLSTATE and
  text of the client's FATAL), never another exception;
* a stream cut at any points gives what it gives whole;
* ``MessageReader`` frames exactly what ``reference_frames`` (the rule restated, header
  by header) finds;
* one exception to "cut as whole", MessageReader's own rule: a refused length refuses
  the whole chunk it arrived in, so messages before it in that chunk are acted on only
  when a cut put them in an earlier chunk (``check_framer``, ``check_handshake``); the
  connection ends with 08P01 either way, or at a Terminate that came first;
* the session trackers (Python's ``protocol/relay.py`` and C's ``_tracker.c``) walk the
  message boundaries and kinds the framer finds, up to the first header the framer
  refuses.  Past that point the trackers do not judge (their documented rule: the
  server judges a malformed length and closes), so only C-Python agreement is asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.startup import (
    CancelRequest,
    StartupMessage,
    StartupPacket,
    read_startup_packet,
)

#: The trackers to hold to the framer: Python's always, C's when it is built.
TRACKERS: tuple[Callable[..., Any], ...] = (SessionTracker,) + (
    (speedups.SessionTracker,) if speedups is not None else ()
)

#: Client message kinds the tracker counts as owing a ReadyForQuery.
_OWING = frozenset(b"QSF")
#: Client message kinds that leave the extended-protocol state alone.
_COPY = frozenset(b"dcf")


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given positions (any order, duplicates and strays allowed)."""
    points = [0, *sorted({cut for cut in cuts if 0 < cut < len(data)}), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


# -- the message framer ------------------------------------------------------------


@dataclass(frozen=True)
class Frames:
    """Where a stream's messages are: ``(offset, kind, body)`` each, the bytes left over,
    and the offset of the first header with a refused length (None when there is none)."""

    messages: tuple[tuple[int, int, bytes], ...]
    rest: bytes
    bad_at: Optional[int]
    #: The stream's length (the rest is its tail).
    end: int


def reference_frames(stream: bytes, max_length: Optional[int] = m.MAX_FRAMED_LENGTH) -> Frames:
    """The framing rule restated on a whole stream: a type byte, an Int32 length counting
    itself (4 to ``max_length``), the body.  ``max_length=None`` is the relay's rule,
    which takes any length from 4 up."""
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    while len(stream) - pos >= 5:
        length = int.from_bytes(stream[pos + 1 : pos + 5], "big")
        if length < 4 or (max_length is not None and length > max_length):
            return Frames(tuple(out), b"", pos, len(stream))
        end = pos + 1 + length
        if end > len(stream):
            break
        out.append((pos, stream[pos], stream[pos + 5 : end]))
        pos = end
    return Frames(tuple(out), stream[pos:], None, len(stream))


@dataclass(frozen=True)
class Framed:
    """What ``MessageReader`` made of a stream: messages and the partial rest, or the
    rejection's SQLSTATE and text (with the messages it had handed out before)."""

    messages: tuple[tuple[int, bytes], ...]
    rest: bytes
    error: Optional[tuple[str, str]]


def frame(chunks: Sequence[bytes]) -> Framed:
    reader = m.MessageReader()
    got: list[tuple[int, bytes]] = []
    for chunk in chunks:
        try:
            got += reader.feed(chunk)
        except ProtocolViolation as e:
            return Framed(tuple(got), b"", (e.sqlstate, e.message))
    return Framed(tuple(got), reader.take_rest(), None)


def check_framer(stream: bytes, cuts: Iterable[int]) -> None:
    """MessageReader fed ``stream`` cut at ``cuts`` frames what the rule finds: the same
    messages and rest, or one 08P01 for a refused length (having handed out only
    messages before it), whole or cut."""
    ref = reference_frames(stream)
    whole = frame([stream])
    cut = frame(split_at(stream, cuts))
    expected = tuple((kind, body) for _, kind, body in ref.messages)
    if ref.bad_at is None:
        assert whole == Framed(expected, ref.rest, None), (whole, ref)
        assert cut == whole, (cut, whole)
        return
    assert whole.error is not None and whole.error[0] == "08P01", whole
    # Whole, the error comes first; cut, the messages of earlier chunks were handed out.
    assert whole.messages == (), whole
    assert cut.error == whole.error, (cut, whole)
    assert cut.messages == expected[: len(cut.messages)], (cut, expected)


# -- the first packet -------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """The opening of a connection read as ``Handshake`` reads it: the packets in order
    up to a StartupMessage or CancelRequest, then the bytes after; or the rejection."""

    packets: tuple[StartupPacket, ...]
    error: Optional[tuple[str, str]]
    rest: bytes


def open_stream(chunks: Sequence[bytes]) -> Opened:
    buffer = b""
    packets: list[StartupPacket] = []
    after: list[bytes] = []
    done = False
    for chunk in chunks:
        if done:
            after.append(chunk)
            continue
        buffer += chunk
        while True:
            try:
                packet, used = read_startup_packet(buffer)
            except ProtocolViolation as e:
                return Opened(tuple(packets), (e.sqlstate, e.message), b"")
            if packet is None:
                break
            assert 8 <= used <= len(buffer), (used, len(buffer))
            packets.append(packet)
            buffer = buffer[used:]
            if isinstance(packet, (StartupMessage, CancelRequest)):
                done = True
                break
    return Opened(tuple(packets), None, buffer + b"".join(after))


#: The SQLSTATEs of a refused first packet: protocol violation, unsupported protocol,
#: no user name.
STARTUP_SQLSTATES = frozenset(("08P01", "0A000", "28000"))


def check_startup(stream: bytes, cuts: Iterable[int]) -> Opened:
    """The opening read whole and cut gives the same packets, rest or error; an error is
    one of the client's FATALs; a StartupMessage read back from the packet the pooler
    would send a server is the same message."""
    whole = open_stream([stream])
    cut = open_stream(split_at(stream, cuts))
    assert cut == whole, (cut, whole)
    if whole.error is not None:
        assert whole.error[0] in STARTUP_SQLSTATES, whole.error
        assert whole.error[1], whole.error
    for packet in whole.packets:
        if isinstance(packet, StartupMessage):
            again, used = read_startup_packet(packet.to_server_packet())
            assert isinstance(again, StartupMessage), again
            assert (again.params, again.user) == (packet.params, packet.user), (again, packet)
    return whole


# -- the trackers against the framer ----------------------------------------------


def _server_model(frames: Frames, upto: int) -> tuple[bool, int, dict[str, str]]:
    """(at a boundary, status, parameters) after the first ``upto`` bytes, by the frames."""
    status = m.IDLE
    params: dict[str, str] = {}
    boundary = upto == 0
    for pos, kind, body in frames.messages:
        end = pos + 5 + len(body)
        if end > upto:
            break
        boundary = end == upto
        if kind == ord("Z") and body:
            status = body[0]
        elif kind == ord("S"):
            try:
                name, value = m.parse_parameter_status(body)
            except ProtocolViolation:
                continue
            params[name] = value
    return boundary, status, params


def _client_model(frames: Frames, upto: int) -> tuple[int, bool, Optional[int]]:
    """(pending, unsynced, offset of a Terminate) once ``upto`` bytes are walked: a
    message counts once its 5-byte header is in."""
    pending = 0
    unsynced = False
    headers = [(pos, kind) for pos, kind, _ in frames.messages]
    if len(frames.rest) >= 5:  # a last message whose body has not all come
        headers.append((frames.end - len(frames.rest), frames.rest[0]))
    for pos, kind in headers:
        if pos + 5 > upto:
            break
        if kind == ord("X"):
            return pending, unsynced, pos
        if kind in _OWING:
            pending += 1
            if kind == ord("S"):
                unsynced = False
        elif kind not in _COPY:
            unsynced = True
    return pending, unsynced, None


def check_tracker_server(make: Callable[..., Any], stream: bytes, cuts: Iterable[int]) -> None:
    """A server stream walked in chunks: after each chunk the tracker is at a message
    boundary exactly where the framer puts one, with the status of the last whole
    ReadyForQuery and the parameters of the whole ParameterStatus messages before it.
    Checked up to the first header the framer refuses (a length under 4)."""
    frames = reference_frames(stream, max_length=None)
    limit = len(stream) if frames.bad_at is None else frames.bad_at
    tracker = make({}, m.IDLE, ())
    done = 0
    for chunk in split_at(stream, cuts):
        tracker.feed_server(chunk)
        done += len(chunk)
        if done > limit:
            break
        boundary, status, params = _server_model(frames, done)
        got = (tracker.server_at_boundary, tracker.status, dict(tracker.params))
        assert got == (boundary, status, params), (make, done, got, (boundary, status, params))


def check_tracker_client(make: Callable[..., Any], stream: bytes, cuts: Iterable[int]) -> None:
    """A client stream walked in chunks: after each chunk the tracker owes a
    ReadyForQuery for each Query, Sync and FunctionCall the framer finds whole-headed,
    knows whether a Sync closed the extended messages, and stops at the Terminate the
    framer finds.  Checked up to the first header the framer refuses."""
    frames = reference_frames(stream, max_length=None)
    limit = len(stream) if frames.bad_at is None else frames.bad_at
    tracker = make({}, m.IDLE, ())
    done = 0
    for chunk in split_at(stream, cuts):
        at = tracker.feed_client(chunk)
        start, done = done, done + len(chunk)
        if done > limit:
            break
        pending, unsynced, terminate = _client_model(frames, done)
        if terminate is not None:
            # Found in this chunk; a header cut before it already went out (offset 0).
            assert at == max(terminate - start, 0), (make, start, at, terminate)
            return
        assert at == -1, (make, start, at)
        assert (tracker.pending, tracker.unsynced) == (pending, unsynced), (
            make,
            done,
            (tracker.pending, tracker.unsynced),
            (pending, unsynced),
        )
        assert tracker.bytes_in == done, (make, tracker.bytes_in, done)


def public_state(tracker: Any) -> tuple[object, ...]:
    """What a session tracker shows, for comparing C's with Python's."""
    return (
        tracker.local,
        tracker.pending,
        tracker.unsynced,
        tracker.status,
        tracker.in_sync,
        tracker.server_at_boundary,
        dict(tracker.params),
        (tracker.queries, tracker.xacts, tracker.bytes_in, tracker.bytes_out),
    )


def _state(tracker: Any) -> tuple[object, ...]:
    return (*public_state(tracker), (tracker._c_head, tracker._s_head, tracker._s_body))


def check_c_matches_python(stream: bytes, cuts: Iterable[int]) -> None:
    """Past what the framer accepts too: the C tracker and Python's, fed the same chunks
    as a server stream and as a client stream, are in the same state after each chunk
    (``test_speedups.DifferentialTests`` asks the same of hypothesis' streams)."""
    if len(TRACKERS) < 2:
        return
    py, c = (make({}, m.IDLE, ()) for make in TRACKERS)
    stopped = False
    for chunk in split_at(stream, cuts):
        py.feed_server(chunk)
        c.feed_server(chunk)
        if not stopped:
            at = py.feed_client(chunk)
            assert c.feed_client(chunk) == at, (chunk, at)
            stopped = at >= 0  # the glue stops walking at a Terminate
        assert _state(c) == _state(py), (_state(c), _state(py))


def check_walkers(stream: bytes, cuts: Iterable[int]) -> None:
    """Every tracker (Python's, C's when built) against the framer, both directions; C
    against Python on the whole stream; and the framer itself."""
    cuts = list(cuts)
    for make in TRACKERS:
        check_tracker_server(make, stream, cuts)
        check_tracker_client(make, stream, cuts)
    check_c_matches_python(stream, cuts)
    check_framer(stream, cuts)


# -- the session's handshake --------------------------------------------------------


def handshake(chunks: Sequence[bytes]) -> tuple[bytes, tuple[str, ...], int, object]:
    """A real ``Session`` (memory reactor, recording client) fed ``chunks`` from its
    STARTUP state as the glue feeds it, reading no more once it closed the client:
    what it sent, did, and became."""
    from tests.unit.test_session_machine import Harness

    session, io = Harness().session()
    for chunk in chunks:
        if io.actions:  # closed or finished: the transport reads no more
            break
        session.client_data(chunk)
    startup = session.startup
    return (
        b"".join(io.sent),
        tuple(io.actions),
        session.state,
        None if startup is None else (startup.params, startup.minor, startup.protocol_options),
    )


def check_handshake(stream: bytes, cuts: Iterable[int]) -> None:
    """The session's opening, whole and cut, ends the same; whatever it refuses ends in
    one FATAL ErrorResponse with a SQLSTATE and a closed client, never an exception."""
    whole = handshake([stream])
    cut = handshake(split_at(stream, cuts))
    if cut != whole:
        # MessageReader's rule: a refused length refuses the chunk it came in, so whole,
        # the messages before it are never acted on, and cut, they may be (a Terminate
        # closes first, a Query is kept).  Both end closed, one of them with the 08P01.
        assert _refused_after_startup(stream), (cut, whole)
        assert "close" in whole[1] and "close" in cut[1], (cut, whole)
        assert b"invalid message length" in whole[0] + cut[0], (cut, whole)
    sent, actions = whole[0], whole[1]
    if "close" in actions:
        # The one-byte answers to SSLRequest and GSSENCRequest, perhaps a
        # NegotiateProtocolVersion, then the FATAL, last; with no FATAL, the client
        # sent a Terminate after its startup packet.
        frames = m.MessageReader().feed(sent.lstrip(b"N"))
        if not any(kind == m.ERROR_RESPONSE for kind, _ in frames) and _terminates(stream):
            return
        assert frames and frames[-1][0] == m.ERROR_RESPONSE, sent
        fields = m.parse_fields(frames[-1][1])
        assert fields["S"] == "FATAL" and len(fields["C"]) == 5, fields


def _terminates(stream: bytes) -> bool:
    """The client sent a Terminate after its startup packet."""
    rest = open_stream([stream]).rest
    return any(kind == m.TERMINATE for _, kind, _ in reference_frames(rest).messages)


def _refused_after_startup(stream: bytes) -> bool:
    """What the client sent after its startup packet holds a length the framer refuses."""
    return reference_frames(open_stream([stream]).rest).bad_at is not None
