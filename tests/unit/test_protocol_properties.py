"""The protocol room on hostile bytes: parsed or refused with the client's error, never
an exception into the reactor, and cut anywhere it gives what it gives whole.

Random and mutated streams (``wire_strategies``) go through the message framer, the
first-packet parser, a real ``Session``'s handshake and password check, and both
password exchanges (the pooler as server, ``FrontendAuth``, and as client,
``BackendAuth``).  The properties themselves are in ``wire_oracles`` (shared with the
atheris targets in fuzz/).
"""

from __future__ import annotations

import base64

import scramp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.auth import AuthResult, FrontendAuth
from pgpool_tw.protocol.backend_auth import BackendAuth, BackendAuthError
from pgpool_tw.protocol.credentials import (
    Md5Secret,
    PlainSecret,
    ScramSecret,
    Secret,
    md5_digest,
    md5_response,
    nonce_ok,
    prepare_password,
    unb64,
)
from pgpool_tw.protocol.startup import MAX_STARTUP_LENGTH, CancelRequest
from pgpool_tw.session.states import AUTHENTICATING, CLOSED
from tests.unit import wire_oracles as oracles
from tests.unit.test_session_machine import Harness, RecordingIO, startup_packet
from tests.unit.wire_strategies import (
    ABSURD_LENGTHS,
    CUTS,
    HOSTILE_MESSAGES,
    HOSTILE_OPENING,
    MESSAGES,
    OPENING,
    mutated,
)

#: Modest example counts: the whole suite must stay quick (fuzz/ runs for long).
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PASSWORD = "correct horse"
SALT = b"pool-tw-salt-16b"


class FramerTests(SynchronousTestCase):
    """``MessageReader``: the rule's messages, or one 08P01, whole and cut alike."""

    @SOME
    @given(MESSAGES, CUTS)
    def test_well_framed_streams(self, stream: bytes, cuts: list[int]) -> None:
        """Valid streams cut anywhere frame into the messages they were built from."""
        oracles.check_framer(stream, cuts)
        self.assertIsNone(oracles.frame([stream]).error)

    @SOME
    @given(HOSTILE_MESSAGES, CUTS)
    def test_mutated_streams(self, stream: bytes, cuts: list[int]) -> None:
        """Mutated streams cut anywhere: the same frames or the same 08P01."""
        oracles.check_framer(stream, cuts)

    @SOME
    @given(st.binary(max_size=200), CUTS)
    def test_random_bytes(self, stream: bytes, cuts: list[int]) -> None:
        """Bytes that were never messages: framed by the rule or refused with 08P01."""
        oracles.check_framer(stream, cuts)

    @FEW
    @given(MESSAGES, st.sampled_from(ABSURD_LENGTHS), st.binary(max_size=20), CUTS)
    def test_absurd_length_after_valid_messages(
        self, head: bytes, length: int, tail: bytes, cuts: list[int]
    ) -> None:
        """A header with any length behind valid messages: refused exactly when the
        length is under 4 or above MAX_FRAMED_LENGTH."""
        stream = head + b"Q" + length.to_bytes(4, "big") + tail
        oracles.check_framer(stream, cuts)
        refused_here = oracles.reference_frames(stream).bad_at == len(head)
        self.assertEqual(refused_here, length < 4 or length > m.MAX_FRAMED_LENGTH)
        if refused_here:
            self.assertEqual(
                oracles.frame([stream]).error, ("08P01", f"invalid message length {length}")
            )


class StartupPacketTests(SynchronousTestCase):
    """``read_startup_packet`` read as the handshake reads it."""

    @SOME
    @given(OPENING, CUTS)
    def test_valid_openings(self, stream: bytes, cuts: list[int]) -> None:
        """What clients send, cut anywhere: the same packets whole and cut."""
        opened = oracles.check_startup(stream, cuts)
        self.assertTrue(opened.packets or opened.error, opened)

    @SOME
    @given(HOSTILE_OPENING, CUTS)
    def test_mutated_openings(self, stream: bytes, cuts: list[int]) -> None:
        """Mutated openings: parsed, incomplete, or refused with 08P01, 0A000 or 28000."""
        oracles.check_startup(stream, cuts)

    @SOME
    @given(st.binary(max_size=64), CUTS)
    @example(b"\x00\x00\x00\x08\x00\x03\x00\x00", [])
    @example(b"\xff\xff\xff\xff", [])
    def test_random_bytes(self, stream: bytes, cuts: list[int]) -> None:
        """Any bytes as a first packet: never another exception."""
        oracles.check_startup(stream, cuts)

    @FEW
    @given(st.sampled_from(ABSURD_LENGTHS), st.binary(max_size=24))
    def test_any_length_field(self, length: int, rest: bytes) -> None:
        """Lengths from 0 to 2^32 - 1: a packet of 8 to 10003 bytes (pgpool-II's rule:
        under 10000 after the length) is read, any other is refused with 08P01."""
        stream = length.to_bytes(4, "big") + rest
        opened = oracles.check_startup(stream, [])
        if not 8 <= length < MAX_STARTUP_LENGTH + 4:
            self.assertEqual(opened.error, ("08P01", "invalid length of startup packet"))

    @FEW
    @given(st.binary(min_size=0, max_size=16))
    def test_cancel_request_body(self, body: bytes) -> None:
        """A CancelRequest is read only with exactly 8 bytes of pid and key."""
        stream = (len(body) + 8).to_bytes(4, "big") + (80877102).to_bytes(4, "big") + body
        opened = oracles.check_startup(stream, [])
        if len(body) == 8:
            (packet,) = opened.packets
            self.assertIsInstance(packet, CancelRequest)
        elif len(body) >= 0:
            self.assertEqual(opened.error, ("08P01", "invalid length of cancel request"))


class HandshakeTests(SynchronousTestCase):
    """A real ``Session`` in its STARTUP state, fed what a client may send."""

    @FEW
    @given(OPENING, CUTS)
    def test_valid_openings(self, stream: bytes, cuts: list[int]) -> None:
        """What clients send, cut anywhere: the same answers, actions and state."""
        oracles.check_handshake(stream, cuts)

    @SOME
    @given(HOSTILE_OPENING, CUTS)
    def test_mutated_openings(self, stream: bytes, cuts: list[int]) -> None:
        """Mutated openings: the same outcome whole and cut; a refusal is one FATAL."""
        oracles.check_handshake(stream, cuts)

    def test_a_terminate_before_a_refused_length(self) -> None:
        """The one way cut differs from whole (found by fuzz_startup.py): in one chunk, a
        refused length refuses the Terminate before it (FATAL 08P01); cut between them,
        the Terminate closes first.  Closed either way."""
        head = startup_packet() + m.terminate()
        stream = head + b"Q\0\0\0\0"
        whole = oracles.handshake([stream])
        cut = oracles.handshake([head, b"Q\0\0\0\0"])
        self.assertIn(b"C08P01\0Minvalid message length 0\0", whole[0])
        self.assertEqual((cut[0], cut[1], whole[1]), (b"", ("close",), ("close",)))
        oracles.check_handshake(stream, [len(head)])


# -- the password exchanges -------------------------------------------------------------


def _clean(test: SynchronousTestCase, result: AuthResult) -> None:
    """A failed login's result is one of the three SQLSTATEs and a FATAL that says it."""
    if result.ok:
        return
    test.assertIn(result.sqlstate, ("28P01", "08P01", "0A000"))
    ((kind, body),) = m.MessageReader().feed(result.error_response())
    fields = m.parse_fields(body)
    test.assertEqual((kind, fields["S"], fields["C"]), (m.ERROR_RESPONSE, "FATAL", result.sqlstate))


def _scram_secret() -> ScramSecret:
    salt, stored, server, iterations = scramp.ScramMechanism().make_auth_info(
        PASSWORD, iteration_count=4096, salt=SALT
    )
    return ScramSecret(iterations, salt, stored, server)


SCRAM_SECRET = _scram_secret()
SECRETS: list[Secret] = [
    SCRAM_SECRET,
    PlainSecret(PASSWORD),
    Md5Secret(md5_digest(PASSWORD, "alice")),
]
HOSTILE_BODY = st.binary(max_size=40) | mutated(st.binary(max_size=40))


class FrontendAuthTests(SynchronousTestCase):
    """The pooler checking a client: hostile PasswordMessage bodies end cleanly."""

    def _scram(self, secret: Secret) -> tuple[FrontendAuth, scramp.ScramClient, bytes]:
        auth = FrontendAuth("scram-sha-256", "alice", secret, False, mock_key=b"k" * 32)
        auth.start()
        client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
        first = client.get_client_first().encode()
        return auth, client, b"SCRAM-SHA-256\0" + m.INT32.pack(len(first)) + first

    @SOME
    @given(st.data())
    def test_mutated_client_first(self, data: st.DataObject) -> None:
        """A mutated SASLInitialResponse: a server-first-message or a clean FATAL."""
        auth, _client, first = self._scram(SCRAM_SECRET)
        body = data.draw(mutated(st.just(first)))
        reply, result = auth.receive(body)
        if result is None:
            self.assertEqual(m.auth_code(m.MessageReader().feed(reply or b"")[0][1]), 11)
        else:
            self.assertFalse(result.ok)
            _clean(self, result)

    @SOME
    @given(st.sampled_from(range(len(SECRETS))), st.data())
    def test_mutated_client_final(self, which: int, data: st.DataObject) -> None:
        """A mutated client-final-message (channel binding, nonce, proof): a clean result,
        a success only when the proof still holds."""
        secret = SECRETS[which]
        auth, client, first = self._scram(secret)
        reply, _ = auth.receive(first)
        ((_, body),) = m.MessageReader().feed(reply or b"")
        client.set_server_first(body[4:].decode())
        final = client.get_client_final().encode()
        mutant = data.draw(mutated(st.just(final)))
        reply, result = auth.receive(mutant)
        assert result is not None
        _clean(self, result)
        if result.ok:
            # Only what keeps the binding, the nonce and the proof (the bytes after
            # p=, base64 of the same 32 bytes) may pass.
            self.assertEqual(mutant.split(b",")[:2], final.split(b",")[:2])
        if mutant == final and not isinstance(secret, Md5Secret):
            self.assertTrue(result.ok)

    @SOME
    @given(
        st.sampled_from(["password", "md5"]),
        st.sampled_from(range(len(SECRETS))),
        st.booleans(),
        st.data(),
    )
    def test_mutated_password_messages(
        self, method: str, which: int, right: bool, data: st.DataObject
    ) -> None:
        """Cleartext and md5 answers, right or wrong, mutated: a clean result."""
        secret = SECRETS[which]
        if method == "md5" and isinstance(secret, ScramSecret):
            return  # md5 with a SCRAM secret is SCRAM: the tests above
        auth = FrontendAuth(method, "alice", secret, True)
        ((_, request),) = m.MessageReader().feed(auth.start())
        if method == "md5":
            answer = md5_response(md5_digest(PASSWORD, "alice"), request[4:8])
        else:
            answer = m.encode(PASSWORD)
        answer = (answer if right else answer[::-1]) + b"\0"
        body = data.draw(mutated(st.just(answer)))
        reply, result = auth.receive(body)
        assert result is not None and reply is None
        _clean(self, result)
        if body == answer:
            self.assertEqual(result.ok, right)

    @SOME
    @given(HOSTILE_BODY, st.sampled_from(range(len(SECRETS))))
    def test_random_bodies_in_every_state(self, body: bytes, which: int) -> None:
        """Random bytes as the first and as the second SCRAM message: a clean result."""
        auth, client, first = self._scram(SECRETS[which])
        reply, result = auth.receive(body)
        if result is not None:
            _clean(self, result)
            return
        reply, result = auth.receive(body)
        assert result is not None
        self.assertFalse(result.ok)
        _clean(self, result)


#: The server's side of a SCRAM exchange, for BackendAuth: what a server may send.
ITERATION_TEXTS = [b"4096", b"1", b"0", b"-1", b"", b"4O96", b"99999999999", b"9" * 5000]


class BackendAuthTests(SynchronousTestCase):
    """The pooler answering a server: a hostile server's requests raise only
    ``BackendAuthError`` (which ``BackendProtocol.answer`` turns into a refused login)."""

    def answer(self, auth: BackendAuth, code: int, data: bytes) -> bytes:
        """BackendAuth's answer to a whole 'R' message, '' when it refused."""
        try:
            return auth.answer(m.message(b"R", m.INT32.pack(code) + data))
        except BackendAuthError as e:
            self.assertTrue(str(e))
            return b""

    @SOME
    @given(
        st.sampled_from([0, 2, 3, 5, 7, 9, 10, 11, 12, 13, -1]),
        HOSTILE_BODY,
        st.sampled_from(range(len(SECRETS))),
    )
    def test_any_request(self, code: int, data: bytes, which: int) -> None:
        """Any request code with any body, first thing: an answer or a refusal."""
        self.answer(BackendAuth("alice", SECRETS[which], None), code, data)

    @SOME
    @given(
        st.booleans(),
        st.sampled_from(ITERATION_TEXTS),
        st.data(),
    )
    def test_mutated_scram_server(
        self, plain: bool, iterations: bytes, data: st.DataObject
    ) -> None:
        """A SCRAM exchange whose server-first and server-final are mutated: refused or
        answered, and never past a wrong signature."""
        if plain:
            auth = BackendAuth("alice", PlainSecret(PASSWORD), None)
        else:
            auth = BackendAuth("alice", SCRAM_SECRET, _client_key())
        first = self.answer(auth, 10, b"SCRAM-SHA-256\0\0")
        ((_, body),) = m.MessageReader().feed(first)
        nonce = body.split(b"r=")[1]
        server_nonce = nonce + b"srv"
        server_first = b"r=" + server_nonce + b",s=" + base64.b64encode(SALT) + b",i=" + iterations
        if plain and iterations == b"4096":
            server_first = data.draw(mutated(st.just(server_first), most=2).filter(_small_count))
        elif not plain:
            server_first = data.draw(mutated(st.just(server_first)))
        final = self.answer(auth, 11, server_first)
        if not final:
            return
        mutant = data.draw(mutated(st.just(b"v=" + b"A" * 44)))
        self.assertEqual(self.answer(auth, 12, mutant), b"")  # refused: it cannot know the key

    def test_iteration_count_of_thousands_of_digits(self) -> None:
        """A server-first-message with a 5000-digit count is refused (int() of it raised
        ValueError past Python's 4300 digits, which escaped BackendProtocol.answer)."""
        auth = BackendAuth("alice", PlainSecret(PASSWORD), None)
        ((_, body),) = m.MessageReader().feed(self.answer(auth, 10, b"SCRAM-SHA-256\0\0"))
        nonce = body.split(b"r=")[1] + b"srv"
        server_first = b"r=" + nonce + b",s=" + base64.b64encode(SALT) + b",i=" + b"9" * 5000
        with self.assertRaises(BackendAuthError):
            auth.answer(m.message(b"R", m.INT32.pack(11) + server_first))


def _client_key() -> bytes:
    """The ClientKey of PASSWORD, as a client proves it in a SCRAM login."""
    from pgpool_tw.protocol.credentials import scram_keys

    return scram_keys(PASSWORD, SALT, 4096)[0]


def _small_count(server_first: bytes) -> bool:
    """Keep iteration counts a test can afford (a mutation may make 4096 into 4096000)."""
    text = server_first.rsplit(b"i=", 1)[-1]
    return not text.isdigit() or len(text) > 8 or int(text) <= 5000


class PasswordCheckTests(SynchronousTestCase):
    """A real ``Session`` asking a client for its password (pool_hba.conf 'password')
    and fed hostile PasswordMessage streams cut anywhere."""

    def run_session(self, stream: bytes, cuts: list[int]) -> tuple[object, ...]:
        from pgpool_tw.config.authfiles import AuthFiles
        from pgpool_tw.config.hba import parse_hba
        from pgpool_tw.config.passwd import parse_passwd, text_entry

        harness = Harness(enable_pool_hba=True, allow_clear_text_frontend_auth=True)
        entries, _ = parse_passwd(text_entry("alice", PASSWORD) + "\n")
        harness.context.auth_files = AuthFiles(
            rules=parse_hba("host all all 0.0.0.0/0 password\n"), secrets=entries
        )
        session, io = harness.session()
        session.client_data(startup_packet())
        self.assertEqual(session.state, AUTHENTICATING)
        for chunk in oracles.split_at(stream, cuts):
            if io.actions:
                break
            session.client_data(chunk)
        return _ending(io), session.state == CLOSED

    @SOME
    @given(
        mutated(
            st.builds(
                lambda answer, more: m.message(b"p", answer + b"\0") + more,
                st.sampled_from([m.encode(PASSWORD), b"wrong", b""]),
                st.one_of(st.just(b""), MESSAGES),
            )
        ),
        CUTS,
    )
    def test_mutated_password_streams(self, stream: bytes, cuts: list[int]) -> None:
        """The same ending whole and cut: logged in, still waiting, or one FATAL."""
        whole = self.run_session(stream, [])
        cut = self.run_session(stream, cuts)
        ending = whole[0]
        if isinstance(ending, str) and ending.startswith("FATAL 08P01 invalid message length"):
            # A refused length anywhere in a chunk refuses the chunk (MessageReader's
            # rule): cut before it, the password is checked first, and a wrong one
            # ends there with 28P01.
            self.assertIn(str(cut[0]).split(" ")[:2], (["FATAL", "08P01"], ["FATAL", "28P01"]))
            return
        self.assertEqual(cut, whole)


def _ending(io: RecordingIO) -> object:
    """How a login ended for the client: its last FATAL, or what it was sent so far."""
    frames = m.MessageReader().feed(b"".join(io.sent))
    for kind, body in reversed(frames):
        if kind == m.ERROR_RESPONSE:
            fields = m.parse_fields(body)
            return f"{fields['S']} {fields['C']} {fields['M']}"
    return tuple(kind for kind, _ in frames)


class CredentialsTests(SynchronousTestCase):
    """The building blocks both exchanges feed a peer's bytes to."""

    @SOME
    @given(st.binary(max_size=40))
    def test_password_bytes_of_any_kind(self, raw: bytes) -> None:
        """Any bytes a client sends as a password (decoded with surrogate escapes, as
        the exchanges decode them) prepare to bytes and hash, never raising."""
        password = m.decode(raw)
        self.assertIsInstance(prepare_password(password), bytes)
        self.assertEqual(len(md5_digest(password, "alice")), 32)
        if password.isascii():
            self.assertEqual(prepare_password(password), raw)

    @SOME
    @given(st.binary(max_size=60) | st.builds(base64.b64encode, st.binary(max_size=40)))
    def test_base64_and_nonces_of_any_bytes(self, raw: bytes) -> None:
        """unb64 gives bytes or None and nonce_ok a bool for any bytes."""
        decoded = unb64(raw)
        self.assertTrue(decoded is None or isinstance(decoded, bytes))
        self.assertIsInstance(nonce_ok(raw), bool)
