"""The first packet a client sends: StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.

These packets have no type byte: an Int32 length that counts itself, then an
Int32 code.  The rules follow pgpool-II's ``read_startup_packet``: the length
less its own four bytes must be above 0 and below 10000, only protocol 3 is
spoken, and a StartupMessage must name a user.  Unlike pgpool-II, a client that
asks for a newer 3.x minor version or for ``_pq_.`` options is answered with
NegotiateProtocolVersion, as PostgreSQL does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Union

from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.messages import (
    INT32,
    TWO_INT32,
    UINT32,
    cstring,
    decode,
    negotiate_protocol_version,
)

MAX_STARTUP_LENGTH = 10000
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
PROTOCOL_3 = 3 << 16

#: Parsed StartupMessages by their packet bytes (code and body).  A client program
#: sends the same startup packet on every connection (pgbench -C, a web app's
#: pool): a hit skips the parse and keeps the derived values (pool key, user)
#: computed on the first.  Bounded: emptied when full, so odd packets cost only
#: their own parse; only packets up to ``_CACHED_PACKET_MAX`` bytes are kept.
_CACHE: dict[bytes, StartupMessage] = {}
_CACHE_SIZE = 128
_CACHED_PACKET_MAX = 1024


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True)
class CancelRequest:
    pid: int
    key: int


@dataclass(frozen=True)
class StartupMessage:
    """A protocol 3 startup packet with its parameters in the order sent."""

    params: tuple[tuple[str, str], ...]
    minor: int = 0
    #: ``_pq_.`` protocol options the client asked for; none is supported.
    protocol_options: tuple[str, ...] = field(default=())

    # Derived values are computed once per message: a cached message serves many
    # connections (see _CACHE), and the message is immutable.

    @cached_property
    def user(self) -> str:
        return self.get("user") or ""

    @cached_property
    def database(self) -> str:
        """The database, defaulting to the user name as PostgreSQL does."""
        return self.get("database") or self.user

    @cached_property
    def application_name(self) -> str:
        return self.get("application_name") or ""

    def get(self, name: str) -> Optional[str]:
        for key, value in self.params:
            if key == name:
                return value
        return None

    def pool_key(self) -> tuple[tuple[str, str], ...]:
        """What a pooled server connection must share with this client.

        Every startup parameter except application_name, which is set per
        session instead; ``database`` is filled in so an omitted database and an
        explicit one equal to the user share connections.
        """
        return self._pool_key

    @cached_property
    def _pool_key(self) -> tuple[tuple[str, str], ...]:
        items = {key: value for key, value in self.params if key != "application_name"}
        items["database"] = self.database
        return tuple(sorted(items.items()))

    def to_server_packet(self) -> bytes:
        """The startup packet the pooler sends to a server: protocol 3.0, no ``_pq_``."""
        body = INT32.pack(PROTOCOL_3)
        body += b"".join(cstring(key) + cstring(value) for key, value in self.params)
        body += b"\0"
        return UINT32.pack(len(body) + 4) + body

    def negotiation(self) -> Optional[bytes]:
        """NegotiateProtocolVersion for the client, or None when it asked for 3.0 plainly."""
        if self.minor == 0 and not self.protocol_options:
            return None
        return negotiate_protocol_version(0, list(self.protocol_options))


StartupPacket = Union[SSLRequest, GSSENCRequest, CancelRequest, StartupMessage]


def read_startup_packet(buffer: bytes) -> tuple[Optional[StartupPacket], int]:
    """Parse the packet at the start of ``buffer``.

    Returns ``(None, 0)`` until the whole packet is there, else the packet and
    how many bytes it took.  Raises ProtocolViolation with the SQLSTATE and text
    the client should be sent.
    """
    if len(buffer) < 4:
        return None, 0
    total = UINT32.unpack_from(buffer)[0]
    body_length = total - 4
    if body_length <= 0 or body_length >= MAX_STARTUP_LENGTH or body_length < 4:
        raise ProtocolViolation("08P01", "invalid length of startup packet")
    if len(buffer) < total:
        return None, 0
    code = UINT32.unpack_from(buffer, 4)[0]
    if code >> 16 == 3 and total <= _CACHED_PACKET_MAX:
        return _cached_startup_message(bytes(buffer[4:total]), code & 0xFFFF), total
    body = bytes(buffer[8:total])
    if code == SSL_REQUEST_CODE:
        return SSLRequest(), total
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest(), total
    if code == CANCEL_REQUEST_CODE:
        if len(body) != 8:
            raise ProtocolViolation("08P01", "invalid length of cancel request")
        pid, key = TWO_INT32.unpack(body)
        return CancelRequest(pid, key), total
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolViolation(
            "0A000",
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
        )
    return _parse_startup_message(body, minor), total


def _cached_startup_message(packet: bytes, minor: int) -> StartupMessage:
    """The StartupMessage of ``packet`` (code and body), parsed once while cached.

    Only packets that parse are kept; a bad one raises each time it is sent.
    """
    message = _CACHE.get(packet)
    if message is None:
        message = _parse_startup_message(packet[4:], minor)
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[packet] = message
    return message


def _parse_startup_message(body: bytes, minor: int) -> StartupMessage:
    # Name/value strings, each NUL-terminated, then one more NUL.
    if body == b"\0":
        parts: list[bytes] = []
    elif body.endswith(b"\0\0"):
        parts = body[:-2].split(b"\0")
    else:
        parts = [b""]
    if len(parts) % 2:
        raise ProtocolViolation(
            "08P01", "invalid startup packet layout: expected terminator as last byte"
        )
    params: list[tuple[str, str]] = []
    options: list[str] = []
    for i in range(0, len(parts), 2):
        name, value = decode(parts[i]), decode(parts[i + 1])
        if not name:
            raise ProtocolViolation("08P01", "invalid startup packet layout: empty name")
        if name.startswith("_pq_."):
            options.append(name)
        elif any(key == name for key, _ in params):
            params = [(k, v) for k, v in params if k != name] + [(name, value)]
        else:
            params.append((name, value))
    packet = StartupMessage(tuple(params), minor, tuple(options))
    if not packet.user:
        raise ProtocolViolation("28000", "no PostgreSQL user name specified in startup packet")
    return packet


def cancel_request(pid: int, key: int) -> bytes:
    """The CancelRequest packet the pooler sends to a server."""
    return UINT32.pack(16) + UINT32.pack(CANCEL_REQUEST_CODE) + TWO_INT32.pack(pid, key)


def ssl_request() -> bytes:
    """The SSLRequest packet the pooler sends to a server before its startup packet."""
    return UINT32.pack(8) + UINT32.pack(SSL_REQUEST_CODE)
