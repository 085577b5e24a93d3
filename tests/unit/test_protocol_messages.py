"""Tests for pgpool_tw.protocol.messages: MessageReader framing, builders and parsers."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.protocol import messages
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.messages import (
    AUTH_OK,
    IDLE,
    IN_FAILED_TRANSACTION,
    IN_TRANSACTION,
    MAX_FRAMED_LENGTH,
    MessageReader,
)

# A few whole messages of different types and sizes, and what the reader must yield.
STREAM_PARTS: list[tuple[bytes, int, bytes]] = [
    (messages.authentication_ok(), ord("R"), b"\x00\x00\x00\x00"),
    (messages.parameter_status("TimeZone", "UTC"), ord("S"), b"TimeZone\0UTC\0"),
    (messages.backend_key_data(42, -7), ord("K"), struct.pack("!ii", 42, -7)),
    (messages.message(b"1"), ord("1"), b""),
    (messages.query("SELECT 1"), ord("Q"), b"SELECT 1\0"),
    (messages.message(b"D", b"x" * 300), ord("D"), b"x" * 300),
    (messages.ready_for_query(IDLE), ord("Z"), b"I"),
]
STREAM = b"".join(raw for raw, _, _ in STREAM_PARTS)
EXPECTED = [(kind, body) for _, kind, body in STREAM_PARTS]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given positions (in any order, duplicates allowed)."""
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


def frame(raw: bytes) -> tuple[int, bytes]:
    """The single (type, body) pair a builder's output frames into."""
    reader = MessageReader()
    out = reader.feed(raw)
    assert len(out) == 1 and len(reader) == 0, (out, len(reader))
    return out[0]


class MessageReaderTests(SynchronousTestCase):
    def test_whole_input(self) -> None:
        """A stream fed in one chunk yields every message in order with nothing left."""
        reader = MessageReader()
        self.assertEqual(reader.feed(STREAM), EXPECTED)
        self.assertEqual(len(reader), 0)
        self.assertEqual(reader.take_rest(), b"")

    def test_one_byte_at_a_time(self) -> None:
        """A stream fed one byte at a time yields the same messages, each once complete."""
        reader = MessageReader()
        out: list[tuple[int, bytes]] = []
        ends = set()
        pos = 0
        for raw, _, _ in STREAM_PARTS:
            pos += len(raw)
            ends.add(pos)
        for i in range(len(STREAM)):
            got = reader.feed(STREAM[i : i + 1])
            if i + 1 in ends:
                self.assertEqual(len(got), 1, f"message ending at {i + 1} not yielded")
            else:
                self.assertEqual(got, [], f"message yielded early at {i + 1}")
            out += got
        self.assertEqual(out, EXPECTED)
        self.assertEqual(len(reader), 0)

    def test_trailing_partial_kept(self) -> None:
        """An incomplete trailing message stays buffered and is completed by later bytes."""
        partial = messages.query("SELECT 2")
        reader = MessageReader()
        self.assertEqual(reader.feed(STREAM + partial[:7]), EXPECTED)
        self.assertEqual(len(reader), 7)
        self.assertEqual(reader.feed(partial[7:]), [(ord("Q"), b"SELECT 2\0")])
        self.assertEqual(len(reader), 0)

    def test_trailing_partial_header_kept(self) -> None:
        """Fewer than five trailing bytes (a cut header) are kept and not judged yet."""
        reader = MessageReader()
        self.assertEqual(reader.feed(messages.terminate() + b"Q\x00\x00"), [(ord("X"), b"")])
        self.assertEqual(len(reader), 3)

    def test_take_rest_hands_over_partial(self) -> None:
        """take_rest returns the buffered partial message and empties the reader."""
        reader = MessageReader()
        reader.feed(messages.terminate() + b"Q\x00\x00\x00\x09SEL")
        self.assertEqual(reader.take_rest(), b"Q\x00\x00\x00\x09SEL")
        self.assertEqual(len(reader), 0)
        self.assertEqual(reader.feed(messages.terminate()), [(ord("X"), b"")])

    def test_several_messages_in_one_chunk(self) -> None:
        """Several messages in one chunk after a partial one all come out in order."""
        reader = MessageReader()
        self.assertEqual(reader.feed(STREAM[:3]), [])
        self.assertEqual(reader.feed(STREAM[3:]), EXPECTED)

    def test_empty_body(self) -> None:
        """A length of exactly 4 frames a message with an empty body."""
        self.assertEqual(MessageReader().feed(b"1\x00\x00\x00\x04"), [(ord("1"), b"")])

    def test_length_below_four_refused(self) -> None:
        """Lengths 0 to 3 raise ProtocolViolation with SQLSTATE 08P01."""
        for length in range(4):
            reader = MessageReader()
            exc = self.assertRaises(
                ProtocolViolation, reader.feed, b"Q" + struct.pack("!I", length)
            )
            self.assertEqual(exc.sqlstate, "08P01")

    def test_length_above_limit_refused_before_body(self) -> None:
        """A length above MAX_FRAMED_LENGTH is refused as soon as the header arrives."""
        for length in (MAX_FRAMED_LENGTH + 1, 0xFFFFFFFF):
            exc = self.assertRaises(
                ProtocolViolation, MessageReader().feed, b"D" + struct.pack("!I", length)
            )
            self.assertEqual(exc.sqlstate, "08P01")

    def test_length_at_limit_accepted(self) -> None:
        """A message of exactly MAX_FRAMED_LENGTH is framed once all of it has arrived."""
        body = b"z" * (MAX_FRAMED_LENGTH - 4)
        raw = messages.message(b"D", body)
        reader = MessageReader()
        self.assertEqual(reader.feed(raw[:-1]), [])
        self.assertEqual(reader.feed(raw[-1:]), [(ord("D"), body)])

    def test_invalid_length_after_valid_messages(self) -> None:
        """A bad length following good messages in the same chunk still raises 08P01."""
        exc = self.assertRaises(
            ProtocolViolation, MessageReader().feed, STREAM + b"Q\x00\x00\x00\x02"
        )
        self.assertEqual(exc.sqlstate, "08P01")

    @given(st.lists(st.integers(min_value=0, max_value=len(STREAM))))
    def test_random_splits(self, cuts: list[int]) -> None:
        """However the stream is cut, the reader yields the same messages."""
        reader = MessageReader()
        out: list[tuple[int, bytes]] = []
        for chunk in split_at(STREAM, cuts):
            out += reader.feed(chunk)
        self.assertEqual(out, EXPECTED)
        self.assertEqual(len(reader), 0)


class BuilderRoundTripTests(SynchronousTestCase):
    def test_error_response_all_fields(self) -> None:
        """error_response carries S, V, C, M, D and H fields that parse_fields reads back."""
        kind, body = frame(
            messages.error_response(
                "28P01", "password authentication failed", "FATAL", "the detail", "a hint"
            )
        )
        self.assertEqual(kind, messages.ERROR_RESPONSE)
        self.assertEqual(
            messages.parse_fields(body),
            {
                "S": "FATAL",
                "V": "FATAL",
                "C": "28P01",
                "M": "password authentication failed",
                "D": "the detail",
                "H": "a hint",
            },
        )

    def test_error_response_without_detail_or_hint(self) -> None:
        """Without detail or hint, the D and H fields are absent."""
        _, body = frame(messages.error_response("08P01", "bad", severity="ERROR"))
        self.assertEqual(
            messages.parse_fields(body), {"S": "ERROR", "V": "ERROR", "C": "08P01", "M": "bad"}
        )

    def test_error_response_hint_only(self) -> None:
        """A hint without a detail gives an H field and no D field."""
        _, body = frame(messages.error_response("53300", "too many", hint="wait"))
        fields = messages.parse_fields(body)
        self.assertEqual(fields["H"], "wait")
        self.assertNotIn("D", fields)

    def test_notice_response(self) -> None:
        """notice=True builds a NoticeResponse ('N') with the same fields."""
        kind, body = frame(messages.error_response("01000", "careful", "WARNING", notice=True))
        self.assertEqual(kind, messages.NOTICE_RESPONSE)
        self.assertEqual(messages.parse_fields(body)["M"], "careful")

    def test_parameter_status(self) -> None:
        """parameter_status round-trips through parse_parameter_status."""
        kind, body = frame(messages.parameter_status("application_name", "psql"))
        self.assertEqual(kind, messages.PARAMETER_STATUS)
        self.assertEqual(messages.parse_parameter_status(body), ("application_name", "psql"))

    def test_parameter_status_empty_value(self) -> None:
        """An empty ParameterStatus value round-trips."""
        _, body = frame(messages.parameter_status("search_path", ""))
        self.assertEqual(messages.parse_parameter_status(body), ("search_path", ""))

    def test_backend_key_data(self) -> None:
        """backend_key_data round-trips, negative and extreme keys included."""
        for pid, key in ((1234, 5678), (1, -1), (2**31 - 1, -(2**31)), (0, 2**31 - 1)):
            kind, body = frame(messages.backend_key_data(pid, key))
            self.assertEqual(kind, messages.BACKEND_KEY_DATA)
            self.assertEqual(messages.parse_backend_key_data(body), (pid, key))

    def test_ready_for_query(self) -> None:
        """ready_for_query carries the transaction state byte as its one-byte body."""
        for status in (IDLE, IN_TRANSACTION, IN_FAILED_TRANSACTION):
            self.assertEqual(
                frame(messages.ready_for_query(status)),
                (messages.READY_FOR_QUERY, bytes((status,))),
            )

    def test_query(self) -> None:
        """query builds a 'Q' message whose body is the NUL-terminated SQL."""
        self.assertEqual(frame(messages.query("SELECT 'é'")), (ord("Q"), "SELECT 'é'\0".encode()))

    def test_terminate(self) -> None:
        """terminate builds an 'X' message with an empty body."""
        self.assertEqual(messages.terminate(), b"X\x00\x00\x00\x04")
        self.assertEqual(frame(messages.terminate()), (messages.TERMINATE, b""))

    def test_authentication_ok(self) -> None:
        """authentication_ok is an 'R' message whose auth code is AUTH_OK."""
        kind, body = frame(messages.authentication_ok())
        self.assertEqual(kind, messages.AUTHENTICATION)
        self.assertEqual(messages.auth_code(body), AUTH_OK)
        self.assertEqual(len(body), 4)

    def test_auth_code(self) -> None:
        """auth_code reads the leading Int32 of an 'R' body, ignoring what follows."""
        self.assertEqual(messages.auth_code(struct.pack("!i", 5) + b"salt"), messages.AUTH_MD5)

    def test_negotiate_protocol_version(self) -> None:
        """NegotiateProtocolVersion carries the newest minor, the count and the option names."""
        kind, body = frame(messages.negotiate_protocol_version(0, ["_pq_.a", "_pq_.bb"]))
        self.assertEqual(kind, messages.NEGOTIATE_PROTOCOL_VERSION)
        self.assertEqual(struct.unpack_from("!ii", body), (0, 2))
        self.assertEqual(body[8:], b"_pq_.a\0_pq_.bb\0")

    def test_negotiate_protocol_version_no_options(self) -> None:
        """With no options, NegotiateProtocolVersion is just the minor and a zero count."""
        self.assertEqual(
            frame(messages.negotiate_protocol_version(0, [])),
            (messages.NEGOTIATE_PROTOCOL_VERSION, b"\x00\x00\x00\x00\x00\x00\x00\x00"),
        )


class ParserErrorTests(SynchronousTestCase):
    def assertViolation(self, func: object, *args: object) -> None:
        exc = self.assertRaises(ProtocolViolation, func, *args)
        self.assertEqual(exc.sqlstate, "08P01")

    def test_unterminated_fields(self) -> None:
        """An ErrorResponse body without its final NUL is a protocol violation."""
        self.assertViolation(messages.parse_fields, b"SFATAL\0Mtext")

    def test_parameter_status_wrong_count(self) -> None:
        """A ParameterStatus without exactly a name and a value is a protocol violation."""
        self.assertViolation(messages.parse_parameter_status, b"name\0")
        self.assertViolation(messages.parse_parameter_status, b"a\0b\0c\0")
        self.assertViolation(messages.parse_parameter_status, b"a\0b")

    def test_backend_key_data_wrong_size(self) -> None:
        """A BackendKeyData body that is not 8 bytes is a protocol violation."""
        self.assertViolation(messages.parse_backend_key_data, b"\0" * 7)
        self.assertViolation(messages.parse_backend_key_data, b"\0" * 9)

    def test_auth_code_short(self) -> None:
        """An authentication request shorter than its Int32 code is a protocol violation."""
        self.assertViolation(messages.auth_code, b"\0\0\0")


class EncodingTests(SynchronousTestCase):
    def test_non_utf8_survives_error_fields(self) -> None:
        """Non-UTF-8 bytes in an error message come back as the same bytes."""
        raw_text = b"caf\xe9 \xff\xfe"
        _, body = frame(messages.error_response("XX000", messages.decode(raw_text)))
        self.assertIn(b"M" + raw_text + b"\0", body)
        self.assertEqual(messages.encode(messages.parse_fields(body)["M"]), raw_text)

    def test_non_utf8_survives_parameter_status(self) -> None:
        """Non-UTF-8 ParameterStatus values round-trip byte for byte."""
        raw = b"LATIN1 \xe9t\xe9"
        _, body = frame(messages.parameter_status("x", messages.decode(raw)))
        self.assertEqual(
            [messages.encode(part) for part in messages.parse_parameter_status(body)],
            [b"x", raw],
        )

    @given(st.binary())
    def test_decode_encode_round_trip(self, raw: bytes) -> None:
        """Any bytes decode and encode back to themselves."""
        self.assertEqual(messages.encode(messages.decode(raw)), raw)

    @given(st.binary().filter(lambda b: b"\0" not in b))
    def test_cstring_round_trip(self, raw: bytes) -> None:
        """cstring of decoded bytes is those bytes plus one NUL."""
        self.assertEqual(messages.cstring(messages.decode(raw)), raw + b"\0")
