"""The pooler in the server's seat: checking a client's password, as a sans-I/O state machine.

``FrontendAuth`` challenges a client (cleartext, md5 or SCRAM-SHA-256) and checks the
answer against a pool_passwd secret; a SCRAM login also yields the ClientKey the client
proved, which ``backend_auth.BackendAuth`` (the pooler in the client's seat) may need to
log in to the server.  The secret types and the hashing are in ``credentials.py``.

Rules: bytes in, bytes and decisions out; no I/O, no Twisted, no logging.  Secrets are
compared with ``hmac.compare_digest`` only.  A wrong password, an unknown user and a secret
that cannot serve the method all end with the same FATAL 28P01 text, after the same
message flow, so a client cannot learn which user names exist.

SCRAM is written here on the stdlib rather than on scramp's server: scramp (1.5) refuses the
empty user name that libpq and every PostgreSQL driver send (``n=,r=…``) and iteration counts
below 4096 (PostgreSQL 16 allows 1), and it hides the AuthMessage that recovering the ClientKey
needs.  scramp still supplies SASLprep, and the tests use it as the independent peer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Optional

from pgpool_tw.protocol.credentials import (
    DEFAULT_ITERATIONS,
    KEY_LENGTH,
    NONCE_LENGTH,
    SALT_LENGTH,
    SCRAM_SHA_256,
    Md5Secret,
    PlainSecret,
    ScramSecret,
    Secret,
    b64,
    hmac_sha256,
    md5_digest,
    md5_response,
    nonce_ok,
    scram_keys,
    unb64,
    xor_bytes,
)
from pgpool_tw.protocol.messages import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    INT32,
    cstring,
    decode,
    encode,
    error_response,
    message,
)

__all__ = ["AuthResult", "FrontendAuth"]

INVALID_PASSWORD = "28P01"
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"

# A per-process key for the fake SCRAM salts of unknown users, so one name always gets the
# same salt (as a real user would) without the salt revealing anything.  A caller that wants
# the salts stable across restarts passes its own ``mock_key``.
_PROCESS_MOCK_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class AuthResult:
    """How a login attempt ended; ``client_key`` is the SCRAM ClientKey the client proved."""

    ok: bool
    sqlstate: str = "00000"
    message: str = ""
    client_key: Optional[bytes] = field(default=None, repr=False)
    detail: Optional[str] = None

    def error_response(self) -> bytes:
        """The FATAL ErrorResponse to send the client for a failed attempt."""
        return error_response(self.sqlstate, self.message, detail=self.detail)


def _sasl_request(code: int, data: bytes) -> bytes:
    return message(b"R", INT32.pack(code) + data)


def _failed(user: str) -> AuthResult:
    return AuthResult(False, INVALID_PASSWORD, f'password authentication failed for user "{user}"')


class _Malformed(Exception):
    """A client message that breaks the SCRAM or password message format."""

    def __init__(self, detail: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(detail)
        self.detail = detail
        self.sqlstate = sqlstate


def _cstring_body(body: bytes) -> bytes:
    """The text of a PasswordMessage, which must be exactly one NUL-terminated string."""
    if not body.endswith(b"\0") or body.index(b"\0") != len(body) - 1:
        raise _Malformed("invalid password packet size")
    return body[:-1]


# --- the pooler as server ---------------------------------------------------------


class FrontendAuth:
    """One login attempt of one client, checked against its pool_passwd secret.

    ``start()`` gives the first AuthenticationRequest; each PasswordMessage body goes to
    ``receive()``, which returns the next message to send and, at the end, the result.  On
    success the caller still sends AuthenticationOk: this class does not decide when the
    session is ready.  ``mock_key`` seeds the fake SCRAM salts (see module note).
    """

    __slots__ = (
        "_client_first_bare",
        "_doomed",
        "_gs2_header",
        "_kind",
        "_md5_expected",
        "_nonce",
        "_salt",
        "_iterations",
        "_secret",
        "_server_first",
        "_server_key",
        "_state",
        "_stored_key",
        "_mock_key",
        "user",
    )

    def __init__(
        self,
        method: str,
        user: str,
        secret: Optional[Secret],
        allow_cleartext: bool,
        *,
        mock_key: Optional[bytes] = None,
    ) -> None:
        if method == "password":
            if not allow_cleartext:
                raise ValueError("cleartext password authentication is not allowed here")
            kind = "password"
        elif method == "md5":
            # PostgreSQL's rule: md5 in pg_hba with a SCRAM secret means SCRAM.
            kind = "scram" if isinstance(secret, ScramSecret) else "md5"
        elif method == "scram-sha-256":
            kind = "scram"
        else:
            raise ValueError(
                f"FrontendAuth handles password, md5 and scram-sha-256, not {method!r}"
            )
        self.user = user
        self._kind = kind
        self._secret = secret
        self._mock_key = _PROCESS_MOCK_KEY if mock_key is None else mock_key
        self._state = "new"
        self._doomed = False
        self._md5_expected = b""
        self._salt = b""
        self._iterations = 0
        self._stored_key = b""
        self._server_key = b""
        self._gs2_header = b""
        self._client_first_bare = b""
        self._server_first = b""
        self._nonce = b""

    @property
    def mechanism(self) -> str:
        """Which exchange runs: 'password', 'md5' or 'scram' (md5 may have become scram)."""
        return self._kind

    def start(self) -> bytes:
        if self._state != "new":
            raise RuntimeError("start() was already called")
        if self._kind == "password":
            self._state = "password"
            return _sasl_request(AUTH_CLEARTEXT, b"")
        if self._kind == "md5":
            salt = secrets.token_bytes(4)
            self._state = "md5"
            secret = self._secret
            if isinstance(secret, Md5Secret):
                self._md5_expected = md5_response(secret.digest, salt)
            elif isinstance(secret, PlainSecret):
                digest = md5_digest(secret.password, self.user)
                self._md5_expected = md5_response(digest, salt)
            else:  # unknown user: a response nobody can produce
                self._doomed = True
                self._md5_expected = b"md5" + secrets.token_hex(16).encode("ascii")
            return _sasl_request(AUTH_MD5, salt)
        self._prepare_scram()
        self._state = "sasl_initial"
        return _sasl_request(AUTH_SASL, cstring(SCRAM_SHA_256) + b"\0")

    def _prepare_scram(self) -> None:
        secret = self._secret
        if isinstance(secret, ScramSecret):
            self._salt, self._iterations = secret.salt, secret.iterations
            self._stored_key, self._server_key = secret.stored_key, secret.server_key
            return
        # Plain passwords and fake exchanges both use the user's mock salt, so the salt a
        # client sees does not tell which of the two it is talking to.
        self._salt = hmac_sha256(self._mock_key, encode(self.user))[:SALT_LENGTH]
        self._iterations = DEFAULT_ITERATIONS
        if isinstance(secret, PlainSecret):
            _, self._stored_key, self._server_key = scram_keys(
                secret.password, self._salt, self._iterations
            )
        else:  # unknown user, or an md5 secret that cannot do SCRAM: fail at the proof
            self._doomed = True
            self._stored_key = secrets.token_bytes(KEY_LENGTH)
            self._server_key = secrets.token_bytes(KEY_LENGTH)

    def receive(self, body: bytes) -> tuple[Optional[bytes], Optional[AuthResult]]:
        state = self._state
        if state in ("new", "done"):
            raise RuntimeError(f"receive() called in state {state!r}")
        try:
            if state == "password":
                return None, self._finish(self._check_password(_cstring_body(body)))
            if state == "md5":
                answer = _cstring_body(body)
                ok = hmac.compare_digest(answer, self._md5_expected) and not self._doomed
                return None, self._finish(AuthResult(True) if ok else _failed(self.user))
            if state == "sasl_initial":
                return self._client_first(body), None
            return self._client_final(body)
        except _Malformed as e:
            # PostgreSQL's wording: a broken SCRAM message is "malformed SCRAM message" with
            # the particular fault as detail; other faults are the message themselves.
            if state.startswith("sasl") and e.sqlstate == PROTOCOL_VIOLATION:
                result = AuthResult(False, e.sqlstate, "malformed SCRAM message", detail=e.detail)
            else:
                result = AuthResult(False, e.sqlstate, e.detail)
            return None, self._finish(result)

    def _finish(self, result: AuthResult) -> AuthResult:
        self._state = "done"
        return result

    def _check_password(self, raw: bytes) -> AuthResult:
        password = decode(raw)
        secret = self._secret
        if secret is None:
            # Spend what a SCRAM check would, so timing does not tell unknown users apart.
            scram_keys(password, hmac_sha256(self._mock_key, encode(self.user)), DEFAULT_ITERATIONS)
            return _failed(self.user)
        if not raw:
            return _failed(self.user)
        if isinstance(secret, PlainSecret):
            ok = hmac.compare_digest(encode(secret.password), raw)
            return AuthResult(True) if ok else _failed(self.user)
        if isinstance(secret, Md5Secret):
            ok = hmac.compare_digest(md5_digest(password, self.user), secret.digest.lower())
            return AuthResult(True) if ok else _failed(self.user)
        client_key, stored_key, server_key = scram_keys(password, secret.salt, secret.iterations)
        ok = hmac.compare_digest(stored_key, secret.stored_key)
        ok = hmac.compare_digest(server_key, secret.server_key) and ok
        return AuthResult(True, client_key=client_key) if ok else _failed(self.user)

    def _client_first(self, body: bytes) -> bytes:
        """SASLInitialResponse in, SASLContinue (server-first-message) out."""
        end = body.find(b"\0")
        if end < 0 or len(body) < end + 5:
            raise _Malformed("malformed SASLInitialResponse message")
        mechanism = body[:end]
        length = INT32.unpack_from(body, end + 1)[0]
        data = body[end + 5 :]
        if length != len(data):
            raise _Malformed("malformed SASLInitialResponse message")
        if mechanism != SCRAM_SHA_256.encode("ascii"):
            raise _Malformed("client selected an invalid SASL authentication mechanism")
        flag = data[:2]
        if data.startswith(b"p="):
            raise _Malformed(
                "The client selected SCRAM-SHA-256 without channel binding, "
                "but the SCRAM message includes channel binding data."
            )
        if flag not in (b"n,", b"y,"):
            raise _Malformed("Unexpected channel-binding flag.")
        if data[2:3] != b",":
            if data[2:4] == b"a=":
                raise _Malformed(
                    "client uses authorization identity, but it is not supported",
                    FEATURE_NOT_SUPPORTED,
                )
            raise _Malformed("Unexpected attribute in client-first-message.")
        self._gs2_header = data[:3]
        bare = data[3:]
        attributes = bare.split(b",")
        # The user name is ignored, as PostgreSQL does: the startup packet names the user.
        if len(attributes) < 2 or not attributes[0].startswith(b"n="):
            raise _Malformed('Expected attribute "n" in client-first-message.')
        if not attributes[1].startswith(b"r="):
            raise _Malformed('Expected attribute "r" in client-first-message.')
        client_nonce = attributes[1][2:]
        if not nonce_ok(client_nonce):
            raise _Malformed("Invalid client nonce in client-first-message.")
        if any(item.startswith(b"m=") for item in attributes[2:]):
            raise _Malformed(
                "client requires an unsupported SCRAM extension", FEATURE_NOT_SUPPORTED
            )
        self._client_first_bare = bare
        self._nonce = client_nonce + b64(secrets.token_bytes(NONCE_LENGTH))
        self._server_first = b"r=%s,s=%s,i=%d" % (self._nonce, b64(self._salt), self._iterations)
        self._state = "sasl_final"
        return _sasl_request(AUTH_SASL_CONTINUE, self._server_first)

    def _client_final(self, data: bytes) -> tuple[Optional[bytes], Optional[AuthResult]]:
        """SASLResponse (client-final-message) in; SASLFinal and the result out."""
        attributes = data.split(b",")
        if len(attributes) < 3 or not attributes[0].startswith(b"c="):
            raise _Malformed('Expected attribute "c" in client-final-message.')
        if not attributes[1].startswith(b"r="):
            raise _Malformed('Expected attribute "r" in client-final-message.')
        if not attributes[-1].startswith(b"p="):
            raise _Malformed('Expected attribute "p" in client-final-message.')
        binding = unb64(attributes[0][2:])
        if binding is None or not hmac.compare_digest(binding, self._gs2_header):
            raise _Malformed("SCRAM channel binding check failed.")
        if not hmac.compare_digest(attributes[1][2:], self._nonce):
            raise _Malformed("Unexpected SCRAM nonce in client-final-message.")
        proof = unb64(attributes[-1][2:])
        if proof is None or len(proof) != KEY_LENGTH:
            raise _Malformed("Malformed proof in client-final-message.")
        without_proof = data[: len(data) - len(attributes[-1]) - 1]
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        client_key = xor_bytes(proof, hmac_sha256(self._stored_key, auth_message))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key)
        if not ok or self._doomed:
            return None, self._finish(_failed(self.user))
        signature = hmac_sha256(self._server_key, auth_message)
        final = _sasl_request(AUTH_SASL_FINAL, b"v=" + b64(signature))
        return final, self._finish(AuthResult(True, client_key=client_key))
