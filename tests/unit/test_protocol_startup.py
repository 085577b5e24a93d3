"""Tests for pgpool_tw.protocol.startup: the client's first packet and what follows from it."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.protocol import messages
from pgpool_tw.protocol import startup as startup_module
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.messages import MessageReader
from pgpool_tw.protocol.startup import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    cancel_request,
    read_startup_packet,
)


def packet(code: int, body: bytes = b"") -> bytes:
    """A length-prefixed startup-phase packet with the given Int32 code."""
    return struct.pack("!II", len(body) + 8, code) + body


def startup(*pairs: tuple[str, str], major: int = 3, minor: int = 0) -> bytes:
    """A StartupMessage packet with the given name/value pairs, terminated properly."""
    body = b"".join(messages.cstring(k) + messages.cstring(v) for k, v in pairs) + b"\0"
    return packet((major << 16) | minor, body)


def read(data: bytes) -> StartupMessage:
    """The StartupMessage ``data`` holds in full, with nothing left over."""
    parsed, used = read_startup_packet(data)
    assert isinstance(parsed, StartupMessage), parsed
    assert used == len(data), (used, len(data))
    return parsed


BASIC = startup(("user", "alice"), ("database", "shop"), ("application_name", "psql"))
SSL = packet(SSL_REQUEST_CODE)
GSSENC = packet(GSSENC_REQUEST_CODE)
CANCEL = cancel_request(4321, -99)


class StartupMessageTests(SynchronousTestCase):
    def test_params_in_order(self) -> None:
        """A StartupMessage keeps its parameters in the order sent."""
        parsed = read(startup(("user", "alice"), ("options", "-c geqo=off"), ("database", "shop")))
        self.assertEqual(
            parsed.params,
            (("user", "alice"), ("options", "-c geqo=off"), ("database", "shop")),
        )
        self.assertEqual(parsed.minor, 0)
        self.assertEqual(parsed.protocol_options, ())

    def test_named_params(self) -> None:
        """user, database and application_name are read from the parameters."""
        parsed = read(BASIC)
        self.assertEqual(parsed.user, "alice")
        self.assertEqual(parsed.database, "shop")
        self.assertEqual(parsed.application_name, "psql")

    def test_database_defaults_to_user(self) -> None:
        """Without a database parameter, the database is the user name."""
        parsed = read(startup(("user", "bob")))
        self.assertEqual(parsed.database, "bob")
        self.assertEqual(parsed.application_name, "")
        self.assertIsNone(parsed.get("database"))

    def test_duplicate_param_last_wins(self) -> None:
        """A parameter sent twice takes its last value and appears once."""
        parsed = read(startup(("user", "a"), ("database", "d"), ("user", "b")))
        self.assertEqual(parsed.user, "b")
        self.assertEqual([name for name, _ in parsed.params].count("user"), 1)
        self.assertEqual(parsed.get("database"), "d")

    def test_empty_value_allowed(self) -> None:
        """A parameter with an empty value is accepted and kept."""
        parsed = read(startup(("user", "alice"), ("options", ""), ("application_name", "")))
        self.assertEqual(parsed.get("options"), "")
        self.assertEqual(parsed.params[1], ("options", ""))
        self.assertEqual(len(parsed.params), 3)

    def test_empty_value_last(self) -> None:
        """An empty value right before the terminator is not mistaken for the terminator."""
        parsed = read(startup(("user", "alice"), ("database", "")))
        self.assertEqual(parsed.params, (("user", "alice"), ("database", "")))
        self.assertEqual(parsed.database, "alice")

    def test_non_utf8_value(self) -> None:
        """A non-UTF-8 parameter value is kept and sent on byte for byte."""
        body = b"user\0alice\0application_name\0caf\xe9\0\0"
        parsed = read(packet(3 << 16, body))
        self.assertEqual(messages.encode(parsed.application_name), b"caf\xe9")
        self.assertEqual(parsed.to_server_packet(), packet(3 << 16, body))

    def test_missing_user_refused(self) -> None:
        """A StartupMessage without a user gets 28000 with PostgreSQL's wording."""
        for data in (startup(("database", "shop")), startup(), startup(("user", ""))):
            exc = self.assertRaises(ProtocolViolation, read_startup_packet, data)
            self.assertEqual(exc.sqlstate, "28000")
            self.assertEqual(exc.message, "no PostgreSQL user name specified in startup packet")

    def test_missing_terminator_refused(self) -> None:
        """Parameters without the final NUL are a 08P01 layout error."""
        for body in (b"user\0alice\0", b"user\0alice", b"user\0\0", b""):
            exc = self.assertRaises(ProtocolViolation, read_startup_packet, packet(3 << 16, body))
            self.assertEqual(exc.sqlstate, "08P01", body)

    def test_empty_name_refused(self) -> None:
        """A parameter with an empty name before the terminator is a 08P01 layout error."""
        exc = self.assertRaises(
            ProtocolViolation, read_startup_packet, packet(3 << 16, b"\0x\0user\0a\0\0")
        )
        self.assertEqual(exc.sqlstate, "08P01")


class OtherPacketTests(SynchronousTestCase):
    def test_ssl_request(self) -> None:
        """An SSLRequest is recognised and takes its 8 bytes."""
        self.assertEqual(read_startup_packet(SSL), (SSLRequest(), 8))

    def test_gssenc_request(self) -> None:
        """A GSSENCRequest is recognised and takes its 8 bytes."""
        self.assertEqual(read_startup_packet(GSSENC), (GSSENCRequest(), 8))

    def test_cancel_request(self) -> None:
        """A CancelRequest yields its pid and (signed) key and takes 16 bytes."""
        self.assertEqual(
            read_startup_packet(packet(CANCEL_REQUEST_CODE, struct.pack("!ii", 77, -5))),
            (CancelRequest(77, -5), 16),
        )

    def test_cancel_request_bad_length(self) -> None:
        """A CancelRequest whose body is not 8 bytes is refused with 08P01."""
        for body in (b"", b"\0" * 4, b"\0" * 7, b"\0" * 9, b"\0" * 12):
            exc = self.assertRaises(
                ProtocolViolation, read_startup_packet, packet(CANCEL_REQUEST_CODE, body)
            )
            self.assertEqual(exc.sqlstate, "08P01", body)

    def test_cancel_request_builder_round_trip(self) -> None:
        """cancel_request builds a packet read back as the same pid and key."""
        for pid, key in ((1, 2), (2**31 - 1, -(2**31)), (12345, -1)):
            self.assertEqual(
                read_startup_packet(cancel_request(pid, key)), (CancelRequest(pid, key), 16)
            )


class FramingTests(SynchronousTestCase):
    def test_every_proper_prefix_incomplete(self) -> None:
        """Every proper prefix of each kind of packet reads as (None, 0)."""
        for data in (BASIC, SSL, GSSENC, CANCEL):
            for end in range(len(data)):
                self.assertEqual(read_startup_packet(data[:end]), (None, 0), (data, end))

    def test_byte_by_byte_accumulation(self) -> None:
        """Bytes arriving one at a time give the packet exactly when the last one arrives."""
        buffer = b""
        results = []
        for i in range(len(BASIC)):
            buffer += BASIC[i : i + 1]
            results.append(read_startup_packet(buffer))
        self.assertEqual(results[:-1], [(None, 0)] * (len(BASIC) - 1))
        self.assertEqual(results[-1], (read(BASIC), len(BASIC)))

    def test_trailing_bytes_not_consumed(self) -> None:
        """Bytes after the packet are left alone: the returned length is the packet's."""
        trailing = messages.query("SELECT 1")
        for data, expected in (
            (BASIC, read(BASIC)),
            (SSL, SSLRequest()),
            (GSSENC, GSSENCRequest()),
            (CANCEL, CancelRequest(4321, -99)),
        ):
            self.assertEqual(read_startup_packet(data + trailing), (expected, len(data)))
            # Even a byte that could start another packet.
            self.assertEqual(read_startup_packet(data + b"\0")[1], len(data))

    def test_bytearray_input(self) -> None:
        """A bytearray buffer is read like bytes."""
        self.assertEqual(read_startup_packet(bytearray(BASIC)), (read(BASIC), len(BASIC)))

    def test_too_short_length_refused(self) -> None:
        """Lengths that leave no room for the 4-byte code (0 to 7) are refused with 08P01."""
        for length in range(8):
            exc = self.assertRaises(
                ProtocolViolation, read_startup_packet, struct.pack("!I", length) + b"\0" * 8
            )
            self.assertEqual(exc.sqlstate, "08P01", length)

    def test_too_long_length_refused_early(self) -> None:
        """A length of 10004 or more is refused with 08P01 before the body arrives."""
        for length in (10004, 10005, 0xFFFFFFFF):
            exc = self.assertRaises(
                ProtocolViolation, read_startup_packet, struct.pack("!I", length)
            )
            self.assertEqual(exc.sqlstate, "08P01", length)

    def test_longest_length_accepted(self) -> None:
        """A 10003-byte StartupMessage, the longest allowed, is read."""
        fixed = len(startup(("user", "u"), ("options", "")))
        data = startup(("user", "u"), ("options", "x" * (10003 - fixed)))
        self.assertEqual(len(data), 10003)
        self.assertEqual(read(data).get("options"), "x" * (10003 - fixed))

    def test_protocol_2_refused(self) -> None:
        """Protocol 2.0 is refused with 0A000 naming the version."""
        exc = self.assertRaises(
            ProtocolViolation, read_startup_packet, startup(("user", "a"), major=2)
        )
        self.assertEqual(exc.sqlstate, "0A000")
        self.assertIn("2.0", exc.message)

    def test_protocol_4_refused(self) -> None:
        """Protocol 4.0 is refused with 0A000 naming the version."""
        exc = self.assertRaises(
            ProtocolViolation, read_startup_packet, startup(("user", "a"), major=4)
        )
        self.assertEqual(exc.sqlstate, "0A000")
        self.assertIn("4.0", exc.message)


class NegotiationTests(SynchronousTestCase):
    def test_plain_3_0_needs_no_negotiation(self) -> None:
        """A 3.0 StartupMessage without _pq_ options needs no NegotiateProtocolVersion."""
        self.assertIsNone(read(BASIC).negotiation())

    def test_newer_minor_negotiated(self) -> None:
        """A 3.2 StartupMessage is answered with NegotiateProtocolVersion for 3.0."""
        parsed = read(startup(("user", "a"), minor=2))
        self.assertEqual(parsed.minor, 2)
        reply = parsed.negotiation()
        assert reply is not None
        self.assertEqual(
            MessageReader().feed(reply),
            [(messages.NEGOTIATE_PROTOCOL_VERSION, struct.pack("!ii", 0, 0))],
        )

    def test_pq_options_negotiated(self) -> None:
        """_pq_ options are set apart from the params and named in NegotiateProtocolVersion."""
        parsed = read(startup(("_pq_.compress", "on"), ("user", "a"), ("_pq_.x", "1"), minor=2))
        self.assertEqual(parsed.params, (("user", "a"),))
        self.assertEqual(parsed.protocol_options, ("_pq_.compress", "_pq_.x"))
        reply = parsed.negotiation()
        assert reply is not None
        [(kind, body)] = MessageReader().feed(reply)
        self.assertEqual(kind, messages.NEGOTIATE_PROTOCOL_VERSION)
        self.assertEqual(struct.unpack_from("!ii", body), (0, 2))
        self.assertEqual(body[8:], b"_pq_.compress\0_pq_.x\0")

    def test_pq_options_on_3_0_negotiated(self) -> None:
        """A 3.0 StartupMessage with a _pq_ option also gets NegotiateProtocolVersion."""
        parsed = read(startup(("user", "a"), ("_pq_.opt", "v")))
        self.assertIsNotNone(parsed.negotiation())

    def test_to_server_packet_is_plain_3_0(self) -> None:
        """to_server_packet sends the same params as 3.0 without _pq_ options."""
        parsed = read(
            startup(("user", "a"), ("_pq_.x", "1"), ("database", "d"), ("options", ""), minor=2)
        )
        again = read(parsed.to_server_packet())
        self.assertEqual(again.params, parsed.params)
        self.assertEqual(again.minor, 0)
        self.assertEqual(again.protocol_options, ())
        self.assertEqual(struct.unpack_from("!I", parsed.to_server_packet(), 4)[0], 3 << 16)


class PoolKeyTests(SynchronousTestCase):
    def test_application_name_excluded(self) -> None:
        """Clients differing only in application_name share a pool key."""
        one = read(startup(("user", "a"), ("database", "d"), ("application_name", "x")))
        two = read(startup(("application_name", "y"), ("user", "a"), ("database", "d")))
        self.assertEqual(one.pool_key(), two.pool_key())
        self.assertNotIn("application_name", dict(one.pool_key()))

    def test_omitted_database_equals_user(self) -> None:
        """An omitted database and database=user give the same pool key."""
        self.assertEqual(
            read(startup(("user", "a"))).pool_key(),
            read(startup(("user", "a"), ("database", "a"))).pool_key(),
        )

    def test_other_params_distinguish(self) -> None:
        """A different user, database or other parameter gives a different pool key."""
        base = read(startup(("user", "a"), ("database", "d"))).pool_key()
        for other in (
            startup(("user", "b"), ("database", "d")),
            startup(("user", "a"), ("database", "e")),
            startup(("user", "a"), ("database", "d"), ("options", "-c x=1")),
            startup(("user", "a")),
        ):
            self.assertNotEqual(read(other).pool_key(), base)


NAMES = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=16
).filter(lambda name: not name.startswith("_pq_."))
VALUES = st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40)


class CacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        startup_module._CACHE.clear()
        self.addCleanup(startup_module._CACHE.clear)

    def test_same_packet_same_message(self) -> None:
        """A startup packet sent again is answered with the message parsed the first time."""
        first = read(BASIC)
        self.assertIs(read(bytearray(BASIC)), first)
        self.assertEqual(first.pool_key(), (("database", "shop"), ("user", "alice")))

    def test_minor_version_is_part_of_the_key(self) -> None:
        """The same parameters under protocol 3.0 and 3.2 are two different messages."""
        pairs = (("user", "alice"),)
        self.assertEqual(read(startup(*pairs, minor=0)).minor, 0)
        self.assertEqual(read(startup(*pairs, minor=2)).minor, 2)

    def test_bad_packet_refused_every_time(self) -> None:
        """A packet that does not parse is never cached: each sending is refused."""
        nameless = startup(("database", "shop"))
        for _ in range(2):
            with self.assertRaises(ProtocolViolation):
                read_startup_packet(nameless)
        self.assertEqual(startup_module._CACHE, {})

    def test_bounded(self) -> None:
        """Many different packets never grow the cache past its size."""
        for i in range(startup_module._CACHE_SIZE * 3):
            self.assertEqual(read(startup(("user", f"u{i}"))).user, f"u{i}")
            self.assertLessEqual(len(startup_module._CACHE), startup_module._CACHE_SIZE)

    def test_large_packet_parsed_not_kept(self) -> None:
        """A packet over the cached size limit is parsed as usual and not kept."""
        big = startup(("user", "alice"), ("options", "x" * startup_module._CACHED_PACKET_MAX))
        self.assertEqual(read(big).get("options"), "x" * startup_module._CACHED_PACKET_MAX)
        self.assertEqual(startup_module._CACHE, {})


class HypothesisTests(SynchronousTestCase):
    @given(st.dictionaries(NAMES, VALUES, max_size=8), VALUES)
    def test_to_server_packet_round_trip(self, params: dict[str, str], user: str) -> None:
        """Any printable parameters with a user round-trip through to_server_packet."""
        params["user"] = user
        sent = StartupMessage(tuple(params.items()))
        parsed = read(sent.to_server_packet())
        self.assertEqual(parsed.params, tuple(params.items()))
        self.assertEqual(parsed.user, user)

    @given(st.binary(max_size=64))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes give a result or ProtocolViolation, never another exception."""
        try:
            parsed, used = read_startup_packet(data)
        except ProtocolViolation:
            return
        self.assertTrue(0 <= used <= len(data))
        self.assertEqual(parsed is None, used == 0)

    @given(st.sampled_from([3 << 16, (3 << 16) | 2, CANCEL_REQUEST_CODE]), st.binary())
    def test_random_bodies(self, code: int, body: bytes) -> None:
        """A valid header with a random body gives a packet or ProtocolViolation only."""
        data = packet(code, body)
        try:
            parsed, used = read_startup_packet(data)
        except ProtocolViolation as exc:
            self.assertIn(exc.sqlstate, ("08P01", "28000"))
            return
        self.assertEqual(used, len(data))
        self.assertIsNotNone(parsed)
