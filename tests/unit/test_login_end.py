"""The end of a login (protocol/login_end.py): the bytes both login paths send."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.login_end import login_end

STATUSES = m.parameter_status("server_version", "16.1") + m.parameter_status("TimeZone", "UTC")


def parse(data: bytes) -> list[tuple[int, bytes]]:
    reader = m.MessageReader()
    out = reader.feed(data)
    assert not len(reader), "trailing bytes"
    return out


class LoginEndTests(SynchronousTestCase):
    def test_messages_in_a_direct_connections_order(self) -> None:
        """AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery, nothing else."""
        data, _ = login_end(STATUSES, 4242, -7, m.IDLE)
        kinds = [chr(kind) for kind, _ in parse(data)]
        self.assertEqual(kinds, ["R", "S", "S", "K", "Z"])
        messages = parse(data)
        self.assertEqual(m.parse_backend_key_data(messages[3][1]), (4242, -7))
        self.assertEqual(messages[4][1], bytes([m.IDLE]))

    def test_authentication_ok_left_out_when_already_sent(self) -> None:
        """A client that got AuthenticationOk during its login does not get it twice."""
        data, _ = login_end(STATUSES, 1, 2, ord("T"), auth_ok=False)
        self.assertEqual([chr(kind) for kind, _ in parse(data)], ["S", "S", "K", "Z"])
        self.assertEqual(parse(data)[-1][1], b"T")

    def test_secret_offset_points_at_the_secret(self) -> None:
        """Writing 4 bytes at the offset gives BackendKeyData that secret, pid untouched."""
        for auth_ok in (True, False):
            data, at = login_end(STATUSES, 99, 0, m.IDLE, auth_ok)
            patched = data[:at] + (-123456).to_bytes(4, "big", signed=True) + data[at + 4 :]
            key = [body for kind, body in parse(patched) if kind == m.BACKEND_KEY_DATA][0]
            self.assertEqual(m.parse_backend_key_data(key), (99, -123456))


class WarmRelayLoginEndTests(SynchronousTestCase):
    skip = None if speedups is not None else "pgpool_tw.engine._speedups is not built"

    def relay(self, reply: bytes, secret_at: int) -> object:
        assert speedups is not None
        lane = speedups.Lane(-1, lambda *a: None, lambda *a: None)
        return speedups.Relay(
            speedups.SessionTracker({}),
            None,
            None,
            -1,
            5,
            lambda rest: None,
            set(),
            lane=lane,
            stack=[],
            connection=object(),
            reply=reply,
            reset=b"",
            reset_count=0,
            secret_at=secret_at,
        )

    def test_secret_offset_must_lie_inside_the_reply(self) -> None:
        """A warm relay refuses a secret offset whose 4 bytes are not all in the reply."""
        data, at = login_end(STATUSES, 1, 0, m.IDLE)
        self.relay(data, at)
        self.relay(data, len(data) - 4)
        for bad in (-1, len(data) - 3, len(data)):
            self.assertRaises(ValueError, self.relay, data, bad)
