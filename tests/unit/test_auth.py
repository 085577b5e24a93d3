"""Tests for pgpool_tw.protocol.auth, backend_auth and credentials: frontend and backend
password exchanges, no sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Callable, Optional

import scramp
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.protocol.auth import AuthResult, FrontendAuth
from pgpool_tw.protocol.backend_auth import BackendAuth, BackendAuthError
from pgpool_tw.protocol.credentials import Md5Secret, PlainSecret, ScramSecret, Secret
from pgpool_tw.protocol.messages import INT32, MessageReader, auth_code, cstring, parse_fields

SALT = b"pool-tw-salt-16b"
PASSWORD = "correct horse"
MOCK = b"k" * 32


def scram_secret(
    password: str = PASSWORD, salt: bytes = SALT, iterations: int = 4096
) -> ScramSecret:
    """The secret PostgreSQL would store, computed by scramp."""
    salt, stored, server, iterations = scramp.ScramMechanism().make_auth_info(
        password, iteration_count=iterations, salt=salt
    )
    return ScramSecret(iterations, salt, stored, server)


def md5hex(data: bytes) -> str:
    """Hex md5, as PostgreSQL spells its md5 hashes."""
    return hashlib.md5(data).hexdigest()


def one_message(data: bytes) -> tuple[int, bytes]:
    """The (type, body) of the single whole message in ``data``."""
    reader = MessageReader()
    messages = reader.feed(data)
    assert len(messages) == 1 and not len(reader), (data, messages)
    return messages[0]


def request(data: bytes) -> tuple[int, bytes]:
    """An AuthenticationRequest's code and the data after the code."""
    kind, body = one_message(data)
    assert kind == ord("R"), data
    return auth_code(body), body[4:]


def initial(data: bytes, mechanism: bytes = b"SCRAM-SHA-256") -> bytes:
    """A SASLInitialResponse body carrying ``data``."""
    return mechanism + b"\0" + INT32.pack(len(data)) + data


def scram_login(
    password: str, secret: Optional[Secret], method: str = "scram-sha-256", user: str = "alice"
) -> tuple[AuthResult, Optional[scramp.ScramClient]]:
    """A full SCRAM login by scramp's client; returns the result and the client if it finished."""
    auth = FrontendAuth(method, user, secret, False, mock_key=MOCK)
    code, data = request(auth.start())
    assert (code, data) == (10, b"SCRAM-SHA-256\0\0"), (code, data)
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    reply, result = auth.receive(initial(client.get_client_first().encode()))
    assert reply is not None and result is None
    code, server_first = request(reply)
    assert code == 11
    client.set_server_first(server_first.decode())
    reply, result = auth.receive(client.get_client_final().encode())
    assert result is not None
    if reply is None:
        return result, None
    code, server_final = request(reply)
    assert code == 12
    client.set_server_final(server_final.decode())  # raises if the server signature is wrong
    return result, client


def failed(user: str = "alice") -> AuthResult:
    """The result PostgreSQL gives for a wrong password, an unknown user or an unusable secret."""
    return AuthResult(False, "28P01", f'password authentication failed for user "{user}"')


class FrontendScramTests(SynchronousTestCase):
    def test_right_password(self) -> None:
        """scramp's client logs in with the right password and accepts our signature."""
        result, client = scram_login(PASSWORD, scram_secret())
        self.assertTrue(result.ok)
        self.assertIsNotNone(client)

    def test_client_key_is_proven_key(self) -> None:
        """On success client_key is the password's ClientKey, computed independently."""
        result, _ = scram_login(PASSWORD, scram_secret())
        salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SALT, 4096)
        expected = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        self.assertEqual(result.client_key, expected)

    def test_wrong_password(self) -> None:
        """A wrong password gets 28P01 with PostgreSQL's text, and no SASLFinal."""
        result, client = scram_login("wrong", scram_secret())
        self.assertEqual(result, failed())
        self.assertIsNone(client)

    def test_unknown_user_same_error(self) -> None:
        """An unknown user runs the whole exchange and gets the same error."""
        result, client = scram_login(PASSWORD, None)
        self.assertEqual(result, failed())
        self.assertIsNone(client)

    def test_unknown_user_salt_is_stable_and_private(self) -> None:
        """The fake salt is the same on every attempt for one name, and differs between names."""

        def salt_for(user: str, mock_key: bytes = MOCK) -> bytes:
            auth = FrontendAuth("scram-sha-256", user, None, False, mock_key=mock_key)
            auth.start()
            reply, _ = auth.receive(initial(b"n,,n=,r=abcdef"))
            assert reply is not None
            fields = dict(item.split(b"=", 1) for item in request(reply)[1].split(b","))
            self.assertEqual(fields[b"i"], b"4096")
            return fields[b"s"]

        self.assertEqual(salt_for("ghost"), salt_for("ghost"))
        self.assertNotEqual(salt_for("ghost"), salt_for("phantom"))
        self.assertNotEqual(salt_for("ghost"), salt_for("ghost", b"other key" * 4))
        self.assertEqual(len(base64.b64decode(salt_for("ghost"))), 16)

    def test_plain_secret_serves_scram(self) -> None:
        """A TEXT entry can serve a SCRAM login."""
        self.assertTrue(scram_login(PASSWORD, PlainSecret(PASSWORD))[0].ok)
        self.assertEqual(scram_login("nope", PlainSecret(PASSWORD))[0], failed())

    def test_md5_secret_cannot_serve_scram(self) -> None:
        """An md5 secret under scram-sha-256 fails like a wrong password, even when right."""
        secret = Md5Secret(md5hex(PASSWORD.encode() + b"alice"))
        self.assertEqual(scram_login(PASSWORD, secret)[0], failed())

    def test_md5_method_with_scram_secret_switches(self) -> None:
        """hba md5 with a SCRAM secret runs SCRAM, as PostgreSQL does."""
        auth = FrontendAuth("md5", "alice", scram_secret(), False)
        self.assertEqual(auth.mechanism, "scram")
        result, _ = scram_login(PASSWORD, scram_secret(), method="md5")
        self.assertTrue(result.ok)

    def test_libpq_style_messages(self) -> None:
        """libpq's empty user name (n=,) and the y,, flag are accepted; the proof is checked."""
        for flag in (b"n,,", b"y,,"):
            auth = FrontendAuth("scram-sha-256", "alice", scram_secret(), False)
            auth.start()
            bare = b"n=,r=rOprNGfwEbeRWgbNEkqO"
            reply, _ = auth.receive(initial(flag + bare))
            assert reply is not None
            server_first = request(reply)[1]
            nonce = server_first.split(b",")[0][2:]
            without_proof = b"c=" + base64.b64encode(flag) + b",r=" + nonce
            message = bare + b"," + server_first + b"," + without_proof
            salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SALT, 4096)
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            stored = hashlib.sha256(client_key).digest()
            signature = hmac.new(stored, message, hashlib.sha256).digest()
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            reply, result = auth.receive(without_proof + b",p=" + base64.b64encode(proof))
            self.assertEqual(result, AuthResult(True, client_key=client_key))
            server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
            expected = b"v=" + base64.b64encode(
                hmac.new(server_key, message, hashlib.sha256).digest()
            )
            assert reply is not None
            self.assertEqual(request(reply), (12, expected))

    def test_server_nonces_differ(self) -> None:
        """Each attempt draws a fresh server nonce."""
        nonces = set()
        for _ in range(5):
            auth = FrontendAuth("scram-sha-256", "alice", scram_secret(), False)
            auth.start()
            reply, _ = auth.receive(initial(b"n,,n=,r=abc"))
            assert reply is not None
            nonces.add(request(reply)[1].split(b",")[0])
        self.assertEqual(len(nonces), 5)


class MalformedScramTests(SynchronousTestCase):
    def first(self, body: bytes) -> AuthResult:
        """The result of sending ``body`` as the SASLInitialResponse."""
        auth = FrontendAuth("scram-sha-256", "alice", scram_secret(), False)
        auth.start()
        reply, result = auth.receive(body)
        self.assertIsNone(reply)
        assert result is not None
        return result

    def final(self, make: Callable[[bytes], bytes]) -> AuthResult:
        """The result of a client-final built by ``make(nonce)`` after a good first message."""
        auth = FrontendAuth("scram-sha-256", "alice", scram_secret(), False)
        auth.start()
        reply, _ = auth.receive(initial(b"n,,n=,r=abc"))
        assert reply is not None
        nonce = request(reply)[1].split(b",")[0][2:]
        reply, result = auth.receive(make(nonce))
        self.assertIsNone(reply)
        assert result is not None
        return result

    def assert_malformed(self, result: AuthResult, detail_words: str) -> None:
        """``result`` is the malformed-SCRAM failure, ``detail_words`` in its detail."""
        self.assertEqual(
            (result.ok, result.sqlstate, result.message),
            (False, "08P01", "malformed SCRAM message"),
        )
        assert result.detail is not None
        self.assertIn(detail_words, result.detail)

    def test_wrong_mechanism(self) -> None:
        """Another SASL mechanism is a protocol violation."""
        result = self.first(initial(b"n,,n=,r=abc", b"SCRAM-SHA-1"))
        self.assert_malformed(result, "invalid SASL authentication mechanism")

    def test_bad_lengths(self) -> None:
        """A length that disagrees with the data, or a missing one, is 08P01."""
        self.assert_malformed(
            self.first(b"SCRAM-SHA-256\0" + INT32.pack(99) + b"n,,"), "SASLInitialResponse"
        )
        self.assert_malformed(self.first(b"SCRAM-SHA-256\0\0"), "SASLInitialResponse")
        self.assert_malformed(self.first(b"SCRAM-SHA-256"), "SASLInitialResponse")
        self.assert_malformed(self.first(initial(b"")), "channel-binding flag")

    def test_channel_binding_refused(self) -> None:
        """p= asks for channel binding we did not offer."""
        self.assert_malformed(
            self.first(initial(b"p=tls-server-end-point,,n=,r=abc")), "channel binding"
        )

    def test_bad_first_messages(self) -> None:
        """Garbage, missing attributes and bad nonces are 08P01."""
        self.assert_malformed(self.first(initial(b"garbage")), "flag")
        self.assert_malformed(self.first(initial(b"n,,r=abc")), '"n"')
        self.assert_malformed(self.first(initial(b"n,,n=,x=abc")), '"r"')
        self.assert_malformed(self.first(initial(b"n,,n=,r=")), "nonce")
        self.assert_malformed(self.first(initial(b"n,,n=,r=a\x01b")), "nonce")

    def test_authzid_not_supported(self) -> None:
        """An authorization identity is 0A000, as PostgreSQL answers."""
        result = self.first(initial(b"n,a=bob,n=,r=abc"))
        self.assertEqual(result.sqlstate, "0A000")

    def test_bad_final_messages(self) -> None:
        """Wrong nonce, binding, proof encoding or order in client-final are 08P01."""
        good_proof = b"p=" + base64.b64encode(b"x" * 32)
        self.assert_malformed(self.final(lambda n: b"c=biws,r=" + n + b"X," + good_proof), "nonce")
        self.assert_malformed(self.final(lambda n: b"c=eSws,r=" + n + b"," + good_proof), "binding")
        self.assert_malformed(self.final(lambda n: b"c=biws,r=" + n + b",p=***"), "proof")
        self.assert_malformed(
            self.final(lambda n: b"c=biws,r=" + n + b",p=" + base64.b64encode(b"short")), "proof"
        )
        self.assert_malformed(self.final(lambda n: b"r=" + n + b",c=biws," + good_proof), '"c"')
        self.assert_malformed(self.final(lambda n: b"c=biws,r=" + n), '"c"')
        self.assert_malformed(
            self.final(lambda n: b"c=biws,r=" + n + b"," + good_proof + b",x=1"), '"p"'
        )

    def test_wrong_proof_is_28p01(self) -> None:
        """A well-formed but wrong proof is a failed password, not a protocol error."""
        result = self.final(lambda n: b"c=biws,r=" + n + b",p=" + base64.b64encode(b"x" * 32))
        self.assertEqual(result, failed())

    def test_error_response(self) -> None:
        """A failed result renders as a FATAL ErrorResponse with its SQLSTATE and detail."""
        result = self.first(initial(b"garbage"))
        kind, body = one_message(result.error_response())
        self.assertEqual(kind, ord("E"))
        fields = parse_fields(body)
        self.assertEqual(
            (fields["S"], fields["C"], fields["M"]), ("FATAL", "08P01", "malformed SCRAM message")
        )
        self.assertIn("D", fields)


class FrontendMd5AndPasswordTests(SynchronousTestCase):
    def md5_login(self, password: str, secret: Optional[Secret], user: str = "alice") -> AuthResult:
        """An md5 login computed by hand, as libpq does it."""
        auth = FrontendAuth("md5", user, secret, False)
        code, salt = request(auth.start())
        self.assertEqual((code, len(salt)), (5, 4))
        inner = md5hex(password.encode() + user.encode())
        reply, result = auth.receive(cstring("md5" + md5hex(inner.encode() + salt)))
        self.assertIsNone(reply)
        assert result is not None
        return result

    def test_md5_secret(self) -> None:
        """md5 with an md5 secret: right password ok, wrong one 28P01."""
        secret = Md5Secret(md5hex(PASSWORD.encode() + b"alice"))
        self.assertEqual(self.md5_login(PASSWORD, secret), AuthResult(True))
        self.assertEqual(self.md5_login("wrong", secret), failed())

    def test_md5_with_plain_secret(self) -> None:
        """md5 with a TEXT entry works too."""
        self.assertTrue(self.md5_login(PASSWORD, PlainSecret(PASSWORD)).ok)
        self.assertEqual(self.md5_login("x", PlainSecret(PASSWORD)), failed())

    def test_md5_unknown_user_same_error(self) -> None:
        """An unknown user under md5 gets a salt and then the same error."""
        self.assertEqual(self.md5_login(PASSWORD, None, user="ghost"), failed("ghost"))

    def test_md5_salts_differ(self) -> None:
        """Every md5 attempt has a fresh random salt."""
        salts = {request(FrontendAuth("md5", "alice", None, False).start())[1] for _ in range(20)}
        self.assertEqual(len(salts), 20)

    def test_md5_malformed_packet(self) -> None:
        """A password packet without its NUL, or with two, is 08P01."""
        for body in (b"md5abc", b"md5\0abc\0"):
            auth = FrontendAuth("md5", "alice", None, False)
            auth.start()
            result = auth.receive(body)[1]
            assert result is not None
            self.assertEqual(
                (result.sqlstate, result.message), ("08P01", "invalid password packet size")
            )

    def cleartext(self, password: str, secret: Optional[Secret]) -> AuthResult:
        """A cleartext login with ``password``."""
        auth = FrontendAuth("password", "alice", secret, True)
        self.assertEqual(request(auth.start()), (3, b""))
        reply, result = auth.receive(cstring(password))
        self.assertIsNone(reply)
        assert result is not None
        return result

    def test_cleartext_against_each_secret(self) -> None:
        """password auth checks text, md5 and SCRAM secrets; SCRAM yields the ClientKey."""
        md5 = Md5Secret(md5hex(PASSWORD.encode() + b"alice"))
        for secret in (PlainSecret(PASSWORD), md5, scram_secret()):
            self.assertTrue(self.cleartext(PASSWORD, secret).ok, secret)
            self.assertEqual(self.cleartext(PASSWORD + "!", secret), failed())
        salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), SALT, 4096)
        key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        self.assertEqual(self.cleartext(PASSWORD, scram_secret()).client_key, key)
        self.assertEqual(self.cleartext(PASSWORD, None), failed())
        self.assertEqual(self.cleartext("", PlainSecret("")), failed())

    def test_cleartext_checks_server_key_too(self) -> None:
        """A SCRAM secret whose ServerKey does not fit refuses the password, as in PostgreSQL."""
        good = scram_secret()
        forged = ScramSecret(good.iterations, good.salt, good.stored_key, b"\0" * 32)
        self.assertEqual(self.cleartext(PASSWORD, forged), failed())

    def test_cleartext_needs_permission(self) -> None:
        """password without allow_cleartext, and non-password methods, are ValueErrors."""
        self.assertRaises(ValueError, FrontendAuth, "password", "alice", None, False)
        for method in ("trust", "reject", "cert", "SCRAM-SHA-256"):
            self.assertRaises(ValueError, FrontendAuth, method, "alice", None, True)

    def test_call_order(self) -> None:
        """receive before start, a second start, or receive after the end are RuntimeErrors."""
        auth = FrontendAuth("md5", "alice", None, False)
        self.assertRaises(RuntimeError, auth.receive, b"x\0")
        auth.start()
        self.assertRaises(RuntimeError, auth.start)
        auth.receive(b"x\0")
        self.assertRaises(RuntimeError, auth.receive, b"x\0")


def r_body(code: int, data: bytes = b"") -> bytes:
    """An AuthenticationRequest body (code included), as MessageReader yields it."""
    return INT32.pack(code) + data


def password_message(data: bytes) -> bytes:
    """The body of the single PasswordMessage in ``data``."""
    kind, body = one_message(data)
    assert kind == ord("p"), data
    return body


class ScrampServer:
    """scramp's server side of SCRAM driven through BackendAuth's messages."""

    def __init__(self, secret: ScramSecret) -> None:
        self.server = scramp.ScramMechanism().make_server(
            lambda user: (secret.salt, secret.stored_key, secret.server_key, secret.iterations)
        )

    def login(self, auth: BackendAuth) -> bytes:
        """Runs the exchange; returns what BackendAuth gave for SASLFinal."""
        body = password_message(
            auth.receive(10, r_body(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"))
        )
        mechanism, _, rest = body.partition(b"\0")
        assert mechanism == b"SCRAM-SHA-256"
        self.server.set_client_first(rest[4:].decode())
        reply = auth.receive(11, r_body(11, self.server.get_server_first().encode()))
        self.server.set_client_final(password_message(reply).decode())  # raises on a bad proof
        return auth.receive(12, r_body(12, self.server.get_server_final().encode()))


class BackendAuthTests(SynchronousTestCase):
    def test_scram_with_proven_client_key_end_to_end(self) -> None:
        """client → FrontendAuth gives the ClientKey → BackendAuth logs in to scramp's server."""
        secret = scram_secret()
        result, _ = scram_login(PASSWORD, secret)
        self.assertTrue(result.ok)
        auth = BackendAuth("alice", secret, result.client_key)
        self.assertEqual(ScrampServer(secret).login(auth), b"")

    def test_scram_with_plain_secret(self) -> None:
        """A TEXT entry runs a full client SCRAM against the server's own salt."""
        auth = BackendAuth("alice", PlainSecret(PASSWORD))
        self.assertEqual(ScrampServer(scram_secret(salt=b"server-salt-0123")).login(auth), b"")

    def test_scram_wrong_password_rejected_by_server(self) -> None:
        """A wrong TEXT password produces a proof the real server refuses."""
        auth = BackendAuth("alice", PlainSecret("wrong"))
        self.assertRaises(scramp.ScramException, ScrampServer(scram_secret()).login, auth)

    def test_scram_secret_needs_client_key(self) -> None:
        """A SCRAM secret without the proven ClientKey cannot log in, and says why."""
        with self.assertRaises(BackendAuthError) as caught:
            BackendAuth("alice", scram_secret()).receive(10, r_body(10, b"SCRAM-SHA-256\0\0"))
        self.assertIn("ClientKey", str(caught.exception))

    def test_scram_secret_wrong_client_key(self) -> None:
        """A ClientKey that does not hash to the StoredKey is refused before sending."""
        auth = BackendAuth("alice", scram_secret(), b"\0" * 32)
        self.assertRaises(BackendAuthError, auth.receive, 10, r_body(10, b"SCRAM-SHA-256\0\0"))

    def test_server_salt_differs(self) -> None:
        """A server whose salt differs from pool_passwd's is reported as such."""
        secret = scram_secret()
        result, _ = scram_login(PASSWORD, secret)
        auth = BackendAuth("alice", secret, result.client_key)
        with self.assertRaises(BackendAuthError) as caught:
            ScrampServer(scram_secret(salt=b"another-salt-16b")).login(auth)
        self.assertEqual(
            str(caught.exception), "the server's SCRAM salt differs from pool_passwd's"
        )

    def test_server_iterations_differ(self) -> None:
        """A server with another iteration count is refused."""
        secret = scram_secret()
        result, _ = scram_login(PASSWORD, secret)
        auth = BackendAuth("alice", secret, result.client_key)
        self.assertRaises(BackendAuthError, ScrampServer(scram_secret(iterations=5000)).login, auth)

    def start_scram(self, auth: BackendAuth) -> bytes:
        """Send SASL and return our client nonce."""
        body = password_message(auth.receive(10, r_body(10, b"SCRAM-SHA-256\0\0")))
        first = body.partition(b"\0")[2][4:]
        self.assertTrue(first.startswith(b"n,,n=alice,r="))
        return first.split(b"r=")[1]

    def test_wrong_server_signature(self) -> None:
        """A SASLFinal whose signature is wrong means the server does not know the key."""
        auth = BackendAuth("alice", PlainSecret(PASSWORD))
        nonce = self.start_scram(auth)
        salt = base64.b64encode(SALT)
        auth.receive(11, r_body(11, b"r=" + nonce + b"srv,s=" + salt + b",i=4096"))
        with self.assertRaises(BackendAuthError):
            auth.receive(12, r_body(12, b"v=" + base64.b64encode(b"\0" * 32)))

    def test_server_errors_and_bad_first(self) -> None:
        """e= from the server, a nonce that does not extend ours, or garbage are errors."""
        for server_first in (b"e=invalid-proof", b"r=someone-else,s=c2FsdA==,i=4096", b"junk"):
            auth = BackendAuth("alice", PlainSecret(PASSWORD))
            self.start_scram(auth)
            self.assertRaises(BackendAuthError, auth.receive, 11, r_body(11, server_first))

    def test_out_of_order(self) -> None:
        """SASLContinue or SASLFinal before SASL is an error."""
        auth = BackendAuth("alice", PlainSecret(PASSWORD))
        self.assertRaises(BackendAuthError, auth.receive, 11, r_body(11, b"r=x,s=eA==,i=1"))
        self.assertRaises(BackendAuthError, auth.receive, 12, r_body(12, b"v=eA=="))

    def test_md5_server(self) -> None:
        """md5 answers: md5(md5(password + user) + salt), from text or from the md5 secret."""
        salt = b"\x01\x02\x03\x04"
        inner = md5hex(PASSWORD.encode() + b"alice")
        expected = b"md5" + md5hex(inner.encode() + salt).encode() + b"\0"
        for secret in (PlainSecret(PASSWORD), Md5Secret(inner), Md5Secret(inner.upper())):
            reply = BackendAuth("alice", secret).receive(5, r_body(5, salt))
            self.assertEqual(password_message(reply), expected)

    def test_cleartext_server(self) -> None:
        """A cleartext request gets the TEXT password; hashed secrets cannot answer it."""
        reply = BackendAuth("alice", PlainSecret(PASSWORD)).receive(3, r_body(3))
        self.assertEqual(password_message(reply), cstring(PASSWORD))
        self.assertRaises(
            BackendAuthError, BackendAuth("alice", Md5Secret("0" * 32)).receive, 3, r_body(3)
        )
        self.assertRaises(
            BackendAuthError, BackendAuth("alice", scram_secret()).receive, 3, r_body(3)
        )

    def test_wrong_secret_kinds(self) -> None:
        """md5 secret for SCRAM, SCRAM secret for md5, and no secret all say why."""
        with self.assertRaises(BackendAuthError) as caught:
            BackendAuth("alice", Md5Secret("0" * 32)).receive(10, r_body(10, b"SCRAM-SHA-256\0\0"))
        self.assertIn("md5 secret", str(caught.exception))
        with self.assertRaises(BackendAuthError) as caught:
            BackendAuth("alice", scram_secret()).receive(5, r_body(5, b"salt"))
        self.assertIn("SCRAM secret", str(caught.exception))
        for code, data in ((3, b""), (5, b"salt"), (10, b"SCRAM-SHA-256\0\0")):
            with self.assertRaises(BackendAuthError) as caught:
                BackendAuth("alice", None).receive(code, r_body(code, data))
            self.assertIn("no usable entry", str(caught.exception))

    def test_unsupported_requests(self) -> None:
        """GSSAPI, unknown codes, SASL without SCRAM-SHA-256 and mismatched bodies are errors."""
        auth = BackendAuth("alice", PlainSecret(PASSWORD))
        with self.assertRaises(BackendAuthError) as caught:
            auth.receive(7, r_body(7))
        self.assertIn("GSSAPI", str(caught.exception))
        self.assertRaises(BackendAuthError, auth.receive, 99, r_body(99))
        self.assertRaises(BackendAuthError, auth.receive, 10, r_body(10, b"OTHER\0\0"))
        self.assertRaises(BackendAuthError, auth.receive, 5, b"salt")  # body without its code
        self.assertRaises(BackendAuthError, auth.receive, 5, r_body(5, b"too long salt"))
