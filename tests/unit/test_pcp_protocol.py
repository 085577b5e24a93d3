"""protocol/pcp.py and admin/pcp.py without sockets: PCP's frames as bytes in and out, the
md5 login, and what a connection answers (the real pcp_* programs are in
tests/integration/test_pcp.py)."""

from __future__ import annotations

import struct
from types import MappingProxyType
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.admin.pcp import PcpFactory, PcpService
from pgpool_tw.admin.pcp_rows import RAND_MAX
from pgpool_tw.admin.snapshot import NodeStats, Snapshot
from pgpool_tw.config.pcpconf import PcpUsers
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.protocol import pcp
from pgpool_tw.protocol.errors import ProtocolViolation

#: md5("secret"), as pcp.conf stores it.
SECRET_MD5 = "5ebe2294ecd0e0f08eab7690d2a6ee69"


def request(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """Cut an answer stream into (type, body) frames."""
    out = []
    while data:
        length = struct.unpack_from("!I", data, 1)[0]
        out.append((data[:1], data[5 : 1 + length]))
        data = data[1 + length :]
    return out


class ReaderTests(SynchronousTestCase):
    STREAM = request(b"M") + request(b"R", b"admin\0" + b"a" * 32 + b"\0") + request(b"L")

    def test_whole_stream(self) -> None:
        """Every request of one chunk comes out, in order, with its body."""
        got = pcp.PcpReader().feed(self.STREAM)
        self.assertEqual(got, [(b"M", b""), (b"R", b"admin\0" + b"a" * 32 + b"\0"), (b"L", b"")])

    def test_one_byte_at_a_time(self) -> None:
        """A split read anywhere (header included) gives the same requests."""
        reader = pcp.PcpReader()
        got = []
        for i in range(len(self.STREAM)):
            got += reader.feed(self.STREAM[i : i + 1])
        self.assertEqual(got, pcp.PcpReader().feed(self.STREAM))

    def test_trailing_partial_request_waits(self) -> None:
        """A request cut short is kept until its rest arrives."""
        reader = pcp.PcpReader()
        self.assertEqual(reader.feed(request(b"L") + b"I\0\0"), [(b"L", b"")])
        self.assertEqual(reader.feed(b"\0\x060\0"), [(b"I", b"0\0")])

    def test_lengths_pgpool_ii_refuses(self) -> None:
        """A length below 4 or of 260 and more is a protocol violation, not a wait."""
        for length in (0, 3, 260, 2**31):
            self.assertRaises(
                ProtocolViolation, pcp.PcpReader().feed, b"L" + struct.pack("!I", length)
            )


class FrameTests(SynchronousTestCase):
    def test_md5_answer(self) -> None:
        """md5hex(md5hex(stored + user) + salt), with a binary salt."""
        self.assertEqual(
            pcp.md5_answer(SECRET_MD5, "admin", b"\x01\x02\x03\x04"),
            "5ad3a907767508122e1584e8e092a7d5",
        )

    def test_node_count(self) -> None:
        self.assertEqual(pcp.node_count_packet(3), b"l\0\0\0\x16CommandComplete\x003\0")

    def test_error_packet_fields(self) -> None:
        """S, C, M and D fields then the closing NUL, length counting itself."""
        packet = pcp.error_packet("bad", "why", "FATAL")
        self.assertEqual(packet, b"E\0\0\0\x1dSFATAL\0CXX000\0Mbad\0Dwhy\0\0")

    def test_pool_status_array_size_is_binary(self) -> None:
        """pcp_pool_status's ArraySize carries a network-order int32, not text."""
        got = frames(pcp.pool_status_packets([("port", "9999", "")]))
        self.assertEqual(got[0], (b"b", b"ArraySize\0\0\0\0\x01"))
        self.assertEqual(got[1], (b"b", b"ProcessConfig\0port\x009999\0\0"))
        self.assertEqual(got[2], (b"b", b"CommandComplete\0"))

    def test_process_count(self) -> None:
        self.assertEqual(
            frames(pcp.process_count_packet([7, 12])),
            [(b"n", b"CommandComplete\x002\x007\x0012\0")],
        )

    def test_request_fields_and_login(self) -> None:
        self.assertEqual(pcp.request_fields(b"1 \0s"), ["1 ", "s"])
        self.assertEqual(pcp.parse_login(b"bob\0abc\0"), ("bob", "abc"))
        self.assertIsNone(pcp.parse_login(b"bob"))


NODES = (
    NodeStats(0, "db0", 5432, "up", "primary", "primary", 1.0, 0, 0.0, False, 3, "up"),
    NodeStats(1, "db1", 5433, "down", "standby", "standby", 1.0, 42, 0.0, False, 0, "up"),
)


class Harness:
    """A PcpProtocol on a StringTransport with a service that records what it is asked."""

    def __init__(self, users: Any = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.detached: defer.Deferred[bool] = defer.Deferred()
        snapshot = Snapshot(0.0, MappingProxyType({}), 0, 0.0, MappingProxyType({}), nodes=NODES)
        config = Config(
            clustering_mode="streaming_replication",
            backends=(BackendNode(0, "db0", 5432), BackendNode(1, "db1", 5433)),
            sr_check_password="hunter2",
        )
        self.clock = Clock()
        if users is None:
            users = PcpUsers("pcp.conf", MappingProxyType({"admin": SECRET_MD5}))
        service = PcpService(
            lambda: snapshot,
            lambda: config,
            lambda: {},
            lambda: ([], []),
            self._detach,
            lambda i: defer.succeed(False),
            lambda i, s: defer.succeed(self.calls.append(("promote", (i, s))) is None),
            lambda: True,
            lambda mode: self.calls.append(("shutdown", mode)),
            lambda: users,
            self.clock,
        )
        self.protocol = PcpFactory(service).buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def _detach(self, index: int) -> defer.Deferred[bool]:
        self.calls.append(("detach", index))
        return self.detached

    def send(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self.protocol.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        return frames(out)

    def login(self, password_md5: str = SECRET_MD5, user: str = "admin") -> list[Any]:
        (salt_frame,) = self.send(request(b"M"))
        answer = pcp.md5_answer(password_md5, user, salt_frame[1])
        return self.send(request(b"R", user.encode() + b"\0" + answer.encode() + b"\0"))


class ConnectionTests(SynchronousTestCase):
    def test_login_then_node_count(self) -> None:
        """The right md5 answer gets AuthenticationOK; then commands are answered."""
        h = Harness()
        self.assertEqual(h.login(), [(b"r", b"AuthenticationOK\0")])
        self.assertEqual(h.send(request(b"L")), [(b"l", b"CommandComplete\x002\0")])

    def test_wrong_password_and_unknown_user_are_fatal(self) -> None:
        """pgpool-II's FATAL for a wrong password and for a user not in pcp.conf; closed."""
        for user, md5 in (("admin", "0" * 32), ("mallory", SECRET_MD5)):
            h = Harness()
            ((kind, body),) = h.login(md5, user)
            self.assertEqual(kind, b"E")
            self.assertIn(f'Mauthentication failed for user "{user}"'.encode(), body)
            self.assertIn(b"SFATAL", body)
            self.assertTrue(h.transport.disconnecting)

    def test_no_pcp_conf_lets_nobody_in(self) -> None:
        """pcp.conf gone after a reload: every login is refused."""
        h = Harness()
        h.protocol.service.users = lambda: None
        ((kind, body),) = h.login()
        self.assertEqual(kind, b"E")
        self.assertIn(b"could not open pcp.conf", body)

    def test_command_before_login_is_fatal(self) -> None:
        h = Harness()
        ((kind, body),) = h.send(request(b"L"))
        self.assertIn(b"connection not authorized", body)
        self.assertTrue(h.transport.disconnecting)

    def test_unknown_and_unsupported_commands(self) -> None:
        """An unknown type is FATAL (pgpool-II's words); recovery and -g are ERRORs that
        leave the connection usable."""
        h = Harness()
        h.login()
        ((kind, body),) = h.send(request(b"O", b"1\0"))
        self.assertIn(b"online recovery is not supported", body)
        self.assertEqual(h.send(request(b"L"))[0][0], b"l")
        ((kind, body),) = h.send(request(b"d", b"1\0"))
        self.assertIn(b"-g is not supported", body)
        ((kind, body),) = h.send(request(b"Q"))
        self.assertIn(b'unknown PCP packet type "Q"', body)
        self.assertTrue(h.transport.disconnecting)

    def test_node_info_fields(self) -> None:
        """NodeInfo carries pgpool-II's 12 fields: status and role as numbers, the weight
        scaled by RAND_MAX, the delay in bytes."""
        h = Harness()
        h.login()
        got = h.send(request(b"I", b"1\0"))
        self.assertEqual(got[0], (b"i", b"ArraySize\x001\0"))
        fields = got[1][1].split(b"\0")
        self.assertEqual(fields[0], b"NodeInfo")
        self.assertEqual(fields[1:5], [b"db1", b"5433", b"3", b"0"])
        self.assertEqual(float(fields[6]) / RAND_MAX, 0.5)
        self.assertEqual(fields[7:10], [b"3", b"standby", b"42"])
        self.assertEqual(got[2], (b"i", b"CommandComplete\0"))
        ((kind, body),) = h.send(request(b"I", b"7\0"))
        self.assertIn(b"invalid node ID : 7", body)

    def test_detach_waits_for_the_node_change_and_holds_later_requests(self) -> None:
        """A detach answers when failover is done; a request behind it waits its turn."""
        h = Harness()
        h.login()
        self.assertEqual(h.send(request(b"D", b"1\0") + request(b"L")), [])
        self.assertEqual(h.calls, [("detach", 1)])
        h.detached.callback(True)
        got = frames(h.transport.value())
        self.assertEqual([k for k, _ in got], [b"d", b"l"])

    def test_promote_switchover_option_and_stop_mode(self) -> None:
        """'1 \\0s' is a switchover of node 1; stop's mode letter picks the shutdown, run
        after the answer is written."""
        h = Harness()
        h.login()
        self.assertEqual(h.send(request(b"J", b"1 \0s")), [(b"d", b"CommandComplete\0")])
        self.assertEqual(h.calls, [("promote", (1, True))])
        ((kind, body),) = h.send(request(b"J", b"0 \0n"))
        self.assertIn(b"already primary", body)
        h = Harness()
        h.login()
        self.assertEqual(h.send(request(b"T", b"i")), [(b"t", b"CommandComplete\0")])
        self.assertEqual(h.calls, [])
        h.clock.advance(0)
        self.assertEqual(h.calls, [("shutdown", "immediate")])

    def test_pool_status_hides_passwords(self) -> None:
        h = Harness()
        h.login()
        data = b"".join(body for _, body in h.send(request(b"B")))
        self.assertIn(b"sr_check_password\0********", data)
        self.assertNotIn(b"hunter2", data)
