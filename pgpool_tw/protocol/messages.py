"""Message framing, builders and the few parsers the pooler needs off the hot path.

A message is a type byte, an Int32 length that counts itself but not the type
byte, and a body.  ``MessageReader`` frames a byte stream into whole messages for
the phases where the pooler must read bodies (startup, authentication, reset);
the relay does not use it (see ``relay.py``).  Builders return ready-to-send
``bytes``.  Nothing here does I/O.
"""

from __future__ import annotations

import struct
from typing import Optional

from pgpool_tw.protocol.errors import ProtocolViolation

INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")
HEADER = struct.Struct("!cI")
TWO_INT32 = struct.Struct("!ii")

#: Type bytes as ints, the way ``bytes[i]`` returns them.
AUTHENTICATION = ord("R")
PARAMETER_STATUS = ord("S")
BACKEND_KEY_DATA = ord("K")
READY_FOR_QUERY = ord("Z")
ERROR_RESPONSE = ord("E")
NOTICE_RESPONSE = ord("N")
NEGOTIATE_PROTOCOL_VERSION = ord("v")
PASSWORD_MESSAGE = ord("p")
TERMINATE = ord("X")

#: Authentication request codes (the Int32 that starts an ``R`` body).
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

#: Transaction states carried by ReadyForQuery.
IDLE = ord("I")
IN_TRANSACTION = ord("T")
IN_FAILED_TRANSACTION = ord("E")

#: A server or client that sends a longer message while the pooler reads whole
#: messages (login, reset) is broken or hostile; the relay has no such limit.
MAX_FRAMED_LENGTH = 1 << 20

ENCODING = "utf-8"
ERRORS = "surrogateescape"


def encode(text: str) -> bytes:
    """Encode a protocol string so bytes that were not UTF-8 come back unchanged."""
    return text.encode(ENCODING, ERRORS)


def decode(raw: bytes) -> str:
    return raw.decode(ENCODING, ERRORS)


def message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + UINT32.pack(len(body) + 4) + body


def cstring(text: str) -> bytes:
    return encode(text) + b"\0"


class MessageReader:
    """Frames a byte stream into ``(type, body)`` pairs for the pooler's slow phases.

    Trailing bytes of an incomplete message stay buffered until more arrive.  A
    length below 4 or above ``MAX_FRAMED_LENGTH`` raises ProtocolViolation: both
    mean the stream can no longer be trusted.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buffer
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        size = len(buf)
        while size - pos >= 5:
            length = UINT32.unpack_from(buf, pos + 1)[0]
            if length < 4 or length > MAX_FRAMED_LENGTH:
                raise ProtocolViolation("08P01", f"invalid message length {length}")
            end = pos + 1 + length
            if end > size:
                break
            out.append((buf[pos], bytes(buf[pos + 5 : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def take_rest(self) -> bytes:
        """Hand over what is buffered (a partial message) and forget it."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def __len__(self) -> int:
        return len(self._buffer)


# --- builders -------------------------------------------------------------------


def error_response(
    sqlstate: str,
    text: str,
    severity: str = "FATAL",
    detail: Optional[str] = None,
    hint: Optional[str] = None,
    notice: bool = False,
) -> bytes:
    """An ErrorResponse (or NoticeResponse) with the fields libpq shows."""
    fields = [b"S", cstring(severity), b"V", cstring(severity), b"C", cstring(sqlstate)]
    fields += [b"M", cstring(text)]
    if detail:
        fields += [b"D", cstring(detail)]
    if hint:
        fields += [b"H", cstring(hint)]
    fields.append(b"\0")
    return message(b"N" if notice else b"E", b"".join(fields))


def authentication_ok() -> bytes:
    return b"R\x00\x00\x00\x08\x00\x00\x00\x00"


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return message(b"K", TWO_INT32.pack(pid, key))


def ready_for_query(status: int) -> bytes:
    return b"Z\x00\x00\x00\x05" + bytes((status,))


def query(sql: str) -> bytes:
    return message(b"Q", cstring(sql))


def terminate() -> bytes:
    return b"X\x00\x00\x00\x04"


def negotiate_protocol_version(newest_minor: int, unrecognized: list[str]) -> bytes:
    body = INT32.pack(newest_minor) + INT32.pack(len(unrecognized))
    return message(b"v", body + b"".join(cstring(name) for name in unrecognized))


# --- parsers --------------------------------------------------------------------


def _split_cstrings(body: bytes) -> list[bytes]:
    if not body.endswith(b"\0"):
        raise ProtocolViolation("08P01", "message string is not terminated")
    return body[:-1].split(b"\0")


def parse_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse/NoticeResponse body, by field code."""
    fields: dict[str, str] = {}
    for item in _split_cstrings(body):
        if item:
            fields[chr(item[0])] = decode(item[1:])
    return fields


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    parts = _split_cstrings(body)
    if len(parts) != 2:
        raise ProtocolViolation("08P01", "malformed ParameterStatus")
    return decode(parts[0]), decode(parts[1])


def parse_backend_key_data(body: bytes) -> tuple[int, int]:
    if len(body) != 8:
        raise ProtocolViolation("08P01", "malformed BackendKeyData")
    pid, key = TWO_INT32.unpack(body)
    return pid, key


def auth_code(body: bytes) -> int:
    if len(body) < 4:
        raise ProtocolViolation("08P01", "malformed authentication request")
    return int(INT32.unpack_from(body)[0])


def without_channel_binding(raw: bytes) -> bytes:
    """An AuthenticationSASL request without SCRAM-SHA-256-PLUS.

    Channel binding ties SCRAM to one TLS connection; the client's TLS
    connection (if any) ends at the pooler, not at the server, so a relayed
    exchange can only work unbound.
    """
    if len(raw) < 9 or auth_code(raw[5:]) != AUTH_SASL:
        return raw
    names = [n for n in raw[9:].split(b"\0") if n and n != b"SCRAM-SHA-256-PLUS"]
    return message(b"R", raw[5:9] + b"".join(n + b"\0" for n in names) + b"\0")
