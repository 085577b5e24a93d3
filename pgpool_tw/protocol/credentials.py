"""The secrets pool_passwd stores and the hashing both directions of a login share.

``Md5Secret``, ``ScramSecret`` and ``PlainSecret`` are what a pool_passwd line holds;
``md5_digest`` and ``scram_keys`` derive them from a password, as PostgreSQL does.  The
rest are the building blocks of md5 and SCRAM-SHA-256 (RFC 5802, RFC 7677) that
``auth.FrontendAuth`` (the pooler as server) and ``backend_auth.BackendAuth`` (the pooler
as client) both use.  The secret types live in this layer, not in ``passwd.py``, because the
protocol layer must not import the layers above it; ``passwd.py`` re-exports them.

Rules: bytes in, bytes out; no I/O, no Twisted, no logging.  Secrets never reach a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Optional, Union

from pgpool_tw.protocol.messages import encode

try:  # scramp >= 1.4 re-exports it here; the import fails loudly if that ever moves.
    from scramp.core import saslprep as _saslprep
except ImportError:  # pragma: no cover
    from scramp.utils import saslprep as _saslprep

SCRAM_SHA_256 = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SALT_LENGTH = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
NONCE_LENGTH = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN
KEY_LENGTH = 32  # SHA-256


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


def prepare_password(password: str) -> bytes:
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


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def xor_bytes(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right))


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def unb64(data: bytes) -> Optional[bytes]:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def md5_digest(password: str, user: str) -> str:
    """Hex md5(password + user): PostgreSQL's stored md5 secret, without 'md5'."""
    return hashlib.md5(encode(password) + encode(user)).hexdigest()


def md5_response(digest: str, salt: bytes) -> bytes:
    """What a client sends for md5 auth: 'md5' + hex md5(hex digest + salt)."""
    return b"md5" + hashlib.md5(digest.encode("ascii") + salt).hexdigest().encode("ascii")


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) for a password, as RFC 5802 derives them."""
    salted = hashlib.pbkdf2_hmac("sha256", prepare_password(password), salt, iterations)
    client_key = hmac_sha256(salted, b"Client Key")
    return client_key, hashlib.sha256(client_key).digest(), hmac_sha256(salted, b"Server Key")


def nonce_ok(nonce: bytes) -> bool:
    """RFC 5802 'printable': ASCII 0x21-0x7E except ','."""
    return bool(nonce) and all(0x21 <= c <= 0x7E and c != 0x2C for c in nonce)
