"""Password authentication in both directions, as sans-I/O state machines.

``FrontendAuth`` puts the pooler in the server's seat: it challenges a client (cleartext,
md5 or SCRAM-SHA-256) and checks the answer against a pool_passwd secret.
``BackendAuth`` puts the pooler in the client's seat: it answers a PostgreSQL server's
challenge with the stored secret, and for a SCRAM-only secret with the ClientKey that the
client proved moments earlier in the same login (PgBouncer's approach), since a StoredKey
alone cannot log in anywhere.

The secret types live here, not in ``passwd.py``, because this layer must not import the
layers above it; ``passwd.py`` re-exports them.

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

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

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

try:  # scramp >= 1.4 re-exports it here; the import fails loudly if that ever moves.
    from scramp.core import saslprep as _saslprep
except ImportError:  # pragma: no cover
    from scramp.utils import saslprep as _saslprep

__all__ = [
    "DEFAULT_ITERATIONS",
    "SALT_LENGTH",
    "SCRAM_SHA_256",
    "AuthResult",
    "BackendAuth",
    "BackendAuthError",
    "FrontendAuth",
    "Md5Secret",
    "PlainSecret",
    "ScramSecret",
    "Secret",
    "md5_digest",
    "scram_keys",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SALT_LENGTH = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
NONCE_LENGTH = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN
KEY_LENGTH = 32  # SHA-256

INVALID_PASSWORD = "28P01"
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"

# A per-process key for the fake SCRAM salts of unknown users, so one name always gets the
# same salt (as a real user would) without the salt revealing anything.  A caller that wants
# the salts stable across restarts passes its own ``mock_key``.
_PROCESS_MOCK_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class Md5Secret:
    """PostgreSQL's md5 secret: hex md5(password + user), stored without the 'md5' prefix.

    Hidden from repr: whoever holds it can pass md5 authentication.
    """

    digest: str = field(repr=False)


@dataclass(frozen=True)
class ScramSecret:
    """PostgreSQL's SCRAM-SHA-256 secret; the keys are hidden from repr, never logged."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.iterations < 1 or not self.salt:
            raise ValueError("a SCRAM secret needs iterations >= 1 and a non-empty salt")
        if len(self.stored_key) != KEY_LENGTH or len(self.server_key) != KEY_LENGTH:
            raise ValueError("SCRAM-SHA-256 keys are 32 bytes long")


@dataclass(frozen=True)
class PlainSecret:
    """A password kept as text (pgpool-II's TEXT form): serves every method, both ways."""

    password: str = field(repr=False)


Secret = Union[Md5Secret, ScramSecret, PlainSecret]


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


class BackendAuthError(Exception):
    """The stored secret cannot answer this server (or the server misbehaved): says why."""


# --- primitives -------------------------------------------------------------------


def _prepare(password: str) -> bytes:
    """PostgreSQL's rule: SASLprep the password, but use it as-is when that fails.

    ASCII passes untouched, as in PostgreSQL's pg_saslprep, and so does anything SASLprep
    prohibits or maps to nothing; bytes that were not UTF-8 come back as they arrived.
    """
    raw = encode(password)
    if password.isascii():
        return raw
    try:
        prepared = _saslprep(password)
    except Exception:  # scramp raises its own exception type; any failure means "as-is"
        return raw
    return prepared.encode("utf-8") if prepared else raw


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right))


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _unb64(data: bytes) -> Optional[bytes]:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def md5_digest(password: str, user: str) -> str:
    """Hex md5(password + user): PostgreSQL's stored md5 secret, without 'md5'."""
    return hashlib.md5(encode(password) + encode(user)).hexdigest()


def _md5_response(digest: str, salt: bytes) -> bytes:
    """What a client sends for md5 auth: 'md5' + hex md5(hex digest + salt)."""
    return b"md5" + hashlib.md5(digest.encode("ascii") + salt).hexdigest().encode("ascii")


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) for a password, as RFC 5802 derives them."""
    salted = hashlib.pbkdf2_hmac("sha256", _prepare(password), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return client_key, hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")


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


def _nonce_ok(nonce: bytes) -> bool:
    """RFC 5802 'printable': ASCII 0x21-0x7E except ','."""
    return bool(nonce) and all(0x21 <= c <= 0x7E and c != 0x2C for c in nonce)


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
                self._md5_expected = _md5_response(secret.digest, salt)
            elif isinstance(secret, PlainSecret):
                digest = md5_digest(secret.password, self.user)
                self._md5_expected = _md5_response(digest, salt)
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
        self._salt = _hmac(self._mock_key, encode(self.user))[:SALT_LENGTH]
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
            scram_keys(password, _hmac(self._mock_key, encode(self.user)), DEFAULT_ITERATIONS)
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
        if not _nonce_ok(client_nonce):
            raise _Malformed("Invalid client nonce in client-first-message.")
        if any(item.startswith(b"m=") for item in attributes[2:]):
            raise _Malformed(
                "client requires an unsupported SCRAM extension", FEATURE_NOT_SUPPORTED
            )
        self._client_first_bare = bare
        self._nonce = client_nonce + _b64(secrets.token_bytes(NONCE_LENGTH))
        self._server_first = b"r=%s,s=%s,i=%d" % (self._nonce, _b64(self._salt), self._iterations)
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
        binding = _unb64(attributes[0][2:])
        if binding is None or not hmac.compare_digest(binding, self._gs2_header):
            raise _Malformed("SCRAM channel binding check failed.")
        if not hmac.compare_digest(attributes[1][2:], self._nonce):
            raise _Malformed("Unexpected SCRAM nonce in client-final-message.")
        proof = _unb64(attributes[-1][2:])
        if proof is None or len(proof) != KEY_LENGTH:
            raise _Malformed("Malformed proof in client-final-message.")
        without_proof = data[: len(data) - len(attributes[-1]) - 1]
        auth_message = b",".join((self._client_first_bare, self._server_first, without_proof))
        client_key = _xor(proof, _hmac(self._stored_key, auth_message))
        ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key)
        if not ok or self._doomed:
            return None, self._finish(_failed(self.user))
        signature = _hmac(self._server_key, auth_message)
        final = _sasl_request(AUTH_SASL_FINAL, b"v=" + _b64(signature))
        return final, self._finish(AuthResult(True, client_key=client_key))


# --- the pooler as client ---------------------------------------------------------

_CODE_NAMES = {2: "Kerberos V5", 6: "SCM credentials", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI"}


class BackendAuth:
    """Answers one server's authentication requests for ``user`` from the stored secret.

    ``receive(code, body)`` takes the whole 'R' message body (the Int32 code included, as
    ``MessageReader`` yields it) and returns the 'p' message to send, or b'' once the
    server's SCRAM signature checked out.
    """

    __slots__ = (
        "_auth_message",
        "_client_first_bare",
        "_client_key",
        "_nonce",
        "_secret",
        "_server_key",
        "_state",
        "user",
    )

    def __init__(self, user: str, secret: Optional[Secret], client_key: Optional[bytes] = None):
        self.user = user
        self._secret = secret
        self._client_key = client_key
        self._state = "new"
        self._nonce = b""
        self._client_first_bare = b""
        self._server_key = b""
        self._auth_message = b""

    def receive(self, code: int, body: bytes) -> bytes:
        if len(body) < 4 or INT32.unpack_from(body)[0] != code:
            raise BackendAuthError("the authentication request body does not carry its code")
        data = body[4:]
        handler = self._handlers().get(code)
        if handler is None:
            name = _CODE_NAMES.get(code, f"code {code}")
            raise BackendAuthError(
                f"the server asks for {name} authentication, which pgpool-tw cannot answer"
            )
        return handler(data)

    def _handlers(self) -> dict[int, Callable[[bytes], bytes]]:
        return {
            AUTH_CLEARTEXT: self._cleartext,
            AUTH_MD5: self._md5,
            AUTH_SASL: self._sasl,
            AUTH_SASL_CONTINUE: self._sasl_continue,
            AUTH_SASL_FINAL: self._sasl_final,
        }

    def _missing(self) -> BackendAuthError:
        return BackendAuthError(f'pool_passwd has no usable entry for user "{self.user}"')

    def _cleartext(self, data: bytes) -> bytes:
        secret = self._secret
        if secret is None:
            raise self._missing()
        if not isinstance(secret, PlainSecret):
            raise BackendAuthError(
                f"the server asks for a cleartext password, but pool_passwd holds only a "
                f'hashed secret for user "{self.user}"; store a TEXT entry'
            )
        return message(b"p", cstring(secret.password))

    def _md5(self, data: bytes) -> bytes:
        secret = self._secret
        if len(data) != 4:
            raise BackendAuthError("malformed AuthenticationMD5Password from the server")
        if secret is None:
            raise self._missing()
        if isinstance(secret, PlainSecret):
            digest = md5_digest(secret.password, self.user)
        elif isinstance(secret, Md5Secret):
            digest = secret.digest.lower()
        else:
            raise BackendAuthError(
                f"the server asks for md5 authentication, but pool_passwd holds a SCRAM "
                f'secret for user "{self.user}"; store an md5 or TEXT entry'
            )
        return message(b"p", _md5_response(digest, data) + b"\0")

    def _sasl(self, data: bytes) -> bytes:
        if self._state != "new":
            raise BackendAuthError("the server restarted SASL authentication")
        mechanisms = data.split(b"\0")
        if SCRAM_SHA_256.encode("ascii") not in mechanisms:
            offered = ", ".join(decode(m) for m in mechanisms if m) or "none"
            raise BackendAuthError(f"the server offers no SCRAM-SHA-256 (offers: {offered})")
        secret = self._secret
        if secret is None:
            raise self._missing()
        if isinstance(secret, Md5Secret):
            raise BackendAuthError(
                f"the server asks for SCRAM-SHA-256, but pool_passwd holds an md5 secret for "
                f'user "{self.user}"; store a SCRAM or TEXT entry'
            )
        if isinstance(secret, ScramSecret):
            key = self._client_key
            if key is None:
                raise BackendAuthError(
                    f'pool_passwd holds a SCRAM secret for user "{self.user}", which can log in '
                    "to the server only with the ClientKey the client proved in this login"
                )
            if not hmac.compare_digest(hashlib.sha256(key).digest(), secret.stored_key):
                raise BackendAuthError("the client's SCRAM ClientKey does not match pool_passwd")
        # RFC 5802 wants a user name here; PostgreSQL ignores it, strict servers need it.
        name = encode(self.user).replace(b"=", b"=3D").replace(b",", b"=2C")
        self._nonce = _b64(secrets.token_bytes(NONCE_LENGTH))
        self._client_first_bare = b"n=" + name + b",r=" + self._nonce
        first = b"n,," + self._client_first_bare
        self._state = "continue"
        return message(b"p", cstring(SCRAM_SHA_256) + INT32.pack(len(first)) + first)

    def _sasl_continue(self, data: bytes) -> bytes:
        if self._state != "continue":
            raise BackendAuthError("unexpected SASLContinue from the server")
        attributes = data.split(b",")
        if data.startswith(b"e="):
            raise BackendAuthError(f"the server refused SCRAM: {decode(data[2:])}")
        if len(attributes) < 3 or [a[:2] for a in attributes[:3]] != [b"r=", b"s=", b"i="]:
            raise BackendAuthError("malformed SCRAM server-first-message")
        nonce, salt = attributes[0][2:], _unb64(attributes[1][2:])
        iterations_text = attributes[2][2:]
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise BackendAuthError("the server's SCRAM nonce does not extend ours")
        if not _nonce_ok(nonce) or not salt or not iterations_text.isdigit():
            raise BackendAuthError("malformed SCRAM server-first-message")
        iterations = int(iterations_text)
        secret = self._secret
        if isinstance(secret, ScramSecret):
            if salt != secret.salt:
                raise BackendAuthError("the server's SCRAM salt differs from pool_passwd's")
            if iterations != secret.iterations:
                raise BackendAuthError(
                    "the server's SCRAM iteration count differs from pool_passwd's"
                )
            assert self._client_key is not None  # checked in _sasl
            client_key, stored_key = self._client_key, secret.stored_key
            self._server_key = secret.server_key
        else:
            assert isinstance(secret, PlainSecret)
            if not 1 <= iterations <= 10_000_000:  # a hostile count would stall the reactor
                raise BackendAuthError(f"the server's SCRAM iteration count {iterations} is absurd")
            client_key, stored_key, self._server_key = scram_keys(secret.password, salt, iterations)
        without_proof = b"c=biws,r=" + nonce  # biws = base64("n,,"): no channel binding
        self._auth_message = b",".join((self._client_first_bare, data, without_proof))
        proof = _xor(client_key, _hmac(stored_key, self._auth_message))
        self._state = "final"
        return message(b"p", without_proof + b",p=" + _b64(proof))

    def _sasl_final(self, data: bytes) -> bytes:
        if self._state != "final":
            raise BackendAuthError("unexpected SASLFinal from the server")
        self._state = "done"
        if data.startswith(b"e="):
            raise BackendAuthError(f"the server refused SCRAM: {decode(data[2:])}")
        signature = _unb64(data.split(b",")[0][2:]) if data.startswith(b"v=") else None
        expected = _hmac(self._server_key, self._auth_message)
        if signature is None or not hmac.compare_digest(signature, expected):
            raise BackendAuthError(
                "the server's SCRAM signature is wrong: it does not know the key"
            )
        return b""
