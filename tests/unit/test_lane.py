"""The C lane's login, driven by poll() on real loopback sockets, without a reactor.

What the lane may do is only what Python hands it: the answers table
(session/handshake.py), the login's end (protocol/login_end.py), cancel key
bytes and free client slots.  These tests hand it each and check that it uses
exactly that, and that everything else is a miss for Python.
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.login_end import login_end
from pgpool_tw.protocol.startup import ssl_request
from pgpool_tw.session.handshake import GSS_ANSWERED, TLS_ANSWERED, lane_answers

GSSENC_REQUEST = m.UINT32.pack(8) + m.UINT32.pack(80877104)


def startup_packet(**params: str) -> bytes:
    body = m.UINT32.pack(196608)
    for name, value in params.items():
        body += m.cstring(name) + m.cstring(value)
    body += b"\0"
    return m.UINT32.pack(len(body) + 4) + body


STARTUP = startup_packet(user="u", database="d")


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class LaneCase(SynchronousTestCase):
    skip = None if speedups is not None else "pgpool_tw.engine._speedups is not built"

    def setUp(self) -> None:
        assert speedups is not None
        self.ep = select.epoll()
        self.addCleanup(self.ep.close)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.addCleanup(self.listener.close)
        self.misses: list[tuple[int, int, bytes, int]] = []
        self.accepted: list[float] = []
        self.events: list[tuple[int, Any, Any]] = []
        self.lane = speedups.Lane(self.ep.fileno(), self.missed, self.event)
        self.lane.listen(self.listener.fileno())
        self.addCleanup(self.lane.unlisten, self.listener.fileno())
        self.addCleanup(self.lane.drop_pending)
        self.lane.answers = lane_answers(False)
        self.keys = os.urandom(8)  # two warm logins' cancel secrets
        self.lane.add_keys(self.keys)
        self.lane.free = 10

    def missed(self, fd: int, listen_fd: int, data: bytes, answered: int, at: float) -> None:
        os.close(fd)  # Python's login would take it over
        self.misses.append((fd, listen_fd, data, answered))
        self.accepted.append(at)

    def event(self, kind: int, relay: Any, data: Any) -> None:
        self.events.append((kind, relay, data))

    def poll(self, times: int = 3) -> None:
        assert speedups is not None
        for _ in range(times):
            speedups.poll(self.ep.fileno(), 20, 16)

    def connect(self) -> socket.socket:
        client = socket.create_connection(self.listener.getsockname())
        client.settimeout(5)
        self.addCleanup(client.close)
        self.poll()
        return client

    def lend(self, packet: bytes = STARTUP, pid: int = 4242) -> Any:
        """A parked warm relay for clients from 127.0.0.1 sending ``packet``."""
        assert speedups is not None
        mine, theirs = socket.socketpair()
        self.addCleanup(mine.close)
        self.addCleanup(theirs.close)
        mine.setblocking(False)
        self.ep.register(mine.fileno(), select.EPOLLIN)
        stack = self.lane.entries.setdefault(socket.inet_aton("127.0.0.1") + packet, [])
        reply, secret_at = login_end(m.parameter_status("a", "b"), pid, 0, m.IDLE)
        relay = speedups.Relay(
            speedups.SessionTracker({}, m.IDLE),
            None,
            FakeTransport(),
            -1,
            mine.fileno(),
            lambda rest: None,
            set(),
            lane=self.lane,
            stack=stack,
            connection=theirs,
            reply=reply,
            reset=b"",
            reset_count=0,
            pid=pid,
            secret_at=secret_at,
        )
        stack.append(relay)
        self.addCleanup(relay.drop, b"")
        return relay

    def login(self, client: socket.socket, packet: bytes = STARTUP) -> list[tuple[int, bytes]]:
        missed = len(self.misses)
        client.sendall(packet)
        self.poll()
        if len(self.misses) > missed:
            return []
        reader = m.MessageReader()
        out: list[tuple[int, bytes]] = []
        while not out or out[-1][0] != m.READY_FOR_QUERY:
            out += reader.feed(client.recv(4096))
        return out


class AnswerTests(LaneCase):
    """SSLRequest and GSSENCRequest are answered from Python's table, once each."""

    def test_requests_in_the_table_answered_then_startup_is_a_miss(self) -> None:
        """Both requests get the table's N; an unknown startup reaches Python with both bits."""
        client = self.connect()
        client.sendall(ssl_request() + GSSENC_REQUEST + STARTUP)
        self.poll()
        self.assertEqual(client.recv(10), b"NN")
        (miss,) = self.misses
        self.assertEqual((miss[2], miss[3]), (STARTUP, TLS_ANSWERED | GSS_ANSWERED))

    def test_a_repeated_request_is_a_miss(self) -> None:
        """A second SSLRequest is not answered here: Python's handshake judges it."""
        client = self.connect()
        client.sendall(ssl_request())
        self.poll()
        self.assertEqual(client.recv(10), b"N")
        client.sendall(ssl_request())
        self.poll()
        (miss,) = self.misses
        self.assertEqual((miss[2], miss[3]), (ssl_request(), TLS_ANSWERED))

    def test_request_not_in_the_table_is_a_miss(self) -> None:
        """With client TLS the table lacks SSLRequest: it goes to Python unanswered."""
        self.lane.answers = lane_answers(True)
        client = self.connect()
        client.sendall(ssl_request())
        self.poll()
        (miss,) = self.misses
        self.assertEqual((miss[2], miss[3]), (ssl_request(), 0))

    def test_answer_comes_from_the_table(self) -> None:
        """The byte sent is the table's, whatever it is."""
        self.lane.answers = {GSSENC_REQUEST: (b"Q", 4)}
        client = self.connect()
        client.sendall(GSSENC_REQUEST + ssl_request())
        self.poll()
        self.assertEqual(client.recv(10), b"Q")
        self.assertEqual([miss[3] for miss in self.misses], [4])

    def test_table_round_trips_and_refuses_nonsense(self) -> None:
        """answers reads back as set; a key not 8 bytes or an answer not 1 byte is refused."""
        self.assertEqual(self.lane.answers, lane_answers(False))
        for bad in ({b"1234567": (b"N", 1)}, {GSSENC_REQUEST: (b"NN", 1)}, {GSSENC_REQUEST: b"N"}):
            self.assertRaises(ValueError, setattr, self.lane, "answers", bad)
        self.assertEqual(self.lane.answers, lane_answers(False))


class HandshakeTableTests(SynchronousTestCase):
    def test_lane_answers_follow_the_handshake_rules(self) -> None:
        """GSSENCRequest is always refused; SSLRequest only without client TLS."""
        self.assertEqual(
            lane_answers(False),
            {GSSENC_REQUEST: (b"N", GSS_ANSWERED), ssl_request(): (b"N", TLS_ANSWERED)},
        )
        self.assertEqual(lane_answers(True), {GSSENC_REQUEST: (b"N", GSS_ANSWERED)})


class KeyTests(LaneCase):
    """Cancel secrets are Python's random bytes, 4 per warm login, each used once."""

    def secret(self, login: list[tuple[int, bytes]]) -> int:
        (key_data,) = [body for kind, body in login if kind == m.BACKEND_KEY_DATA]
        return m.parse_backend_key_data(key_data)[1]

    def test_each_login_takes_the_next_4_bytes(self) -> None:
        """Two warm logins get the handed-down bytes as secrets (last first), then a miss."""
        relays = [self.lend(), self.lend(), self.lend()]
        first = self.login(self.connect())
        second = self.login(self.connect())
        expected = [int.from_bytes(self.keys[at : at + 4], "big", signed=True) for at in (4, 0)]
        self.assertEqual([self.secret(first), self.secret(second)], expected)
        self.assertEqual([relays[2].secret, relays[1].secret], expected)
        self.assertEqual((self.lane.keys_left, self.lane.hits, self.misses), (0, 2, []))
        self.assertEqual(self.login(self.connect()), [])
        self.assertEqual((self.lane.hits, len(self.misses)), (2, 1))
        self.assertEqual(self.misses[0][2], STARTUP)

    def test_refilled_lane_logs_in_again(self) -> None:
        """Once Python adds keys, a login that missed for want of one is served."""
        self.lend()
        self.lend()
        self.lend()
        self.login(self.connect())
        self.login(self.connect())
        self.assertEqual(self.lane.add_keys(b"\x01\x02\x03\x04"), 4)
        self.assertEqual(self.secret(self.login(self.connect())), 0x01020304)

    def test_add_keys_takes_whole_keys_up_to_a_block(self) -> None:
        """At most 4096 bytes are held, in whole 4-byte keys; the rest is refused."""
        self.assertEqual(self.lane.add_keys(b"12345"), 4)
        self.assertEqual(self.lane.add_keys(bytes(5000)), 4096 - 12)
        self.assertEqual((self.lane.keys_left, self.lane.add_keys(b"abcd")), (4096, 0))


class SlotTests(LaneCase):
    """Warm logins take the free client slots Python counted, and give them back."""

    def test_no_free_slot_is_a_miss(self) -> None:
        """With no slot free a login the lane could serve goes to Python (which queues it)."""
        self.lane.free = 0
        self.lend()
        self.assertEqual(self.login(self.connect()), [])
        self.assertEqual((len(self.misses), self.lane.hits, self.lane.active), (1, 0, 0))

    def test_each_login_takes_one_and_its_end_gives_it_back(self) -> None:
        """One free slot: one warm session; its Terminate frees the slot for the next."""
        self.lane.free = 1
        self.lend()
        self.lend()
        first = self.connect()
        self.assertNotEqual(self.login(first), [])
        self.assertEqual((self.lane.free, self.lane.active), (0, 1))
        self.assertEqual(self.login(self.connect()), [])  # no slot: a miss
        first.sendall(m.terminate())
        self.poll()
        self.assertEqual((self.lane.free, self.lane.active), (1, 0))
        self.assertNotEqual(self.login(self.connect()), [])
        self.assertEqual((self.lane.free, self.lane.hits, len(self.misses)), (0, 2, 1))


class SweepTests(LaneCase):
    """authentication_timeout for clients the lane accepted: Python names the cutoff."""

    def test_client_accepted_before_the_cutoff_is_closed(self) -> None:
        """sweep(cutoff) closes a client still logging in that was accepted by then."""
        client = self.connect()
        client.sendall(STARTUP[:6])  # a startup packet cut short: still pending
        self.poll()
        self.assertEqual(self.lane.pending, 1)
        self.assertEqual(self.lane.sweep(time.monotonic() - 60), [])  # not due yet
        self.assertEqual(self.lane.pending, 1)
        port = client.getsockname()[1]
        closed = self.lane.sweep(time.monotonic())
        self.assertEqual(closed, [(socket.inet_aton("127.0.0.1"), port, 6, 0)])
        self.assertEqual((self.lane.pending, client.recv(1)), (0, b""))  # end of file

    def test_client_accepted_after_the_cutoff_stays(self) -> None:
        """A client accepted after the cutoff keeps its time to log in."""
        cutoff = time.monotonic()
        client = self.connect()
        client.sendall(STARTUP[:6])
        self.poll()
        self.assertEqual(self.lane.sweep(cutoff), [])
        self.assertEqual(self.lane.pending, 1)

    def test_oldest_pending_is_when_the_first_was_accepted(self) -> None:
        """Python times its next sweep from the oldest pending client's accept."""
        self.assertIsNone(self.lane.oldest_pending())
        before = time.monotonic()
        first = self.connect()
        middle = time.monotonic()
        self.connect()
        oldest = self.lane.oldest_pending()
        assert oldest is not None
        self.assertTrue(before <= oldest <= middle, (before, oldest, middle))
        self.lane.sweep(oldest)
        self.assertEqual((self.lane.pending, first.recv(1)), (1, b""))
        later = self.lane.oldest_pending()
        assert later is not None
        self.assertGreaterEqual(later, middle)

    def test_a_miss_carries_when_the_client_was_accepted(self) -> None:
        """A client handed to Python keeps its accept time: its timeout counts from it."""
        before = time.monotonic()
        client = self.connect()
        after = time.monotonic()
        self.login(client)  # no warm entry: a miss
        self.assertEqual(len(self.accepted), 1)
        self.assertTrue(before <= self.accepted[0] <= after, (before, self.accepted, after))


class CapTests(LaneCase):
    """pending_cap: an accept past it closes the oldest pending client first."""

    def test_oldest_pending_client_goes_first(self) -> None:
        self.lane.pending_cap = 2
        first, second = self.connect(), self.connect()
        self.assertEqual((self.lane.pending, self.lane.shed), (2, 0))
        third = self.connect()
        self.assertEqual((self.lane.pending, self.lane.shed), (2, 1))
        self.assertEqual(first.recv(1), b"")  # closed: the oldest
        for alive in (second, third):
            alive.setblocking(False)
            self.assertRaises(BlockingIOError, alive.recv, 1)  # still open, nothing sent

    def test_shed_oldest_closes_one(self) -> None:
        """Python's cap counts the lane's clients too, and may close its oldest."""
        self.assertFalse(self.lane.shed_oldest())
        first = self.connect()
        self.connect()
        self.assertTrue(self.lane.shed_oldest())
        self.assertEqual((self.lane.pending, first.recv(1)), (1, b""))
