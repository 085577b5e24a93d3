"""The pooler in the client's seat: answering a PostgreSQL server's password challenge.

``BackendAuth`` answers cleartext, md5 and SCRAM-SHA-256 requests from the stored
pool_passwd secret.  For a SCRAM-only secret it answers with the ClientKey that the client
proved moments earlier in the same login (PgBouncer's approach), since a StoredKey alone
cannot log in anywhere; it checks the server's signature before the login goes on.

Rules: bytes in, bytes and decisions out; no I/O, no Twisted, no logging.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Callable, Optional

from pgpool_tw.protocol.credentials import (
    NONCE_LENGTH,
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
    message,
)

__all__ = ["BackendAuth", "BackendAuthError"]


class BackendAuthError(Exception):
    """The stored secret cannot answer this server (or the server misbehaved): says why."""


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

    def answer(self, raw: bytes) -> bytes:
        """The reply to a whole AuthenticationRequest message ``raw`` (b"" when none is due)."""
        body = raw[5:]
        if len(body) < 4:
            raise BackendAuthError("the authentication request body does not carry its code")
        return self.receive(INT32.unpack_from(body)[0], body)

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
        return message(b"p", md5_response(digest, data) + b"\0")

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
        self._nonce = b64(secrets.token_bytes(NONCE_LENGTH))
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
        nonce, salt = attributes[0][2:], unb64(attributes[1][2:])
        iterations_text = attributes[2][2:]
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise BackendAuthError("the server's SCRAM nonce does not extend ours")
        if not nonce_ok(nonce) or not salt or not iterations_text.isdigit():
            raise BackendAuthError("malformed SCRAM server-first-message")
        if len(iterations_text) > 10:  # int() raises ValueError past 4300 digits
            raise BackendAuthError("the server's SCRAM iteration count is absurd")
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
        proof = xor_bytes(client_key, hmac_sha256(stored_key, self._auth_message))
        self._state = "final"
        return message(b"p", without_proof + b",p=" + b64(proof))

    def _sasl_final(self, data: bytes) -> bytes:
        if self._state != "final":
            raise BackendAuthError("unexpected SASLFinal from the server")
        self._state = "done"
        if data.startswith(b"e="):
            raise BackendAuthError(f"the server refused SCRAM: {decode(data[2:])}")
        signature = unb64(data.split(b",")[0][2:]) if data.startswith(b"v=") else None
        expected = hmac_sha256(self._server_key, self._auth_message)
        if signature is None or not hmac.compare_digest(signature, expected):
            raise BackendAuthError(
                "the server's SCRAM signature is wrong: it does not know the key"
            )
        return b""
