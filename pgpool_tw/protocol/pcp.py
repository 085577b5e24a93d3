"""PCP, pgpool-II's control protocol, as bytes: framing, the md5 login, each answer's frames.

What the ``pcp_*`` programs of pgpool-II 4.x (libpcp) send and expect, learnt from its
sources (facts, not code).  Every packet, both ways, is one type byte, a 4-byte big-endian
length that counts itself but not the type byte, and a body; a request's arguments and an
answer's fields are NUL-terminated text.  pgpool-II refuses a request whose length is not
below 260 (``MAX_PACKET``), and so does this reader: memory stays bounded.

The login: the client sends ``M`` (no body) and gets ``m`` with 4 random salt bytes; then
``R`` with ``user\\0answer\\0``, where answer is
``md5hex(md5hex(md5hex(password) + user) + salt)``; pcp.conf stores ``md5hex(password)``,
so :func:`md5_answer` computes the same from the stored hash.  ``r`` ``AuthenticationOK``
lets it in; anything else is an ``E`` packet (:func:`error_packet`, PostgreSQL's field
letters) and pgpool-II closes the connection after a FATAL one.

Answers are ``CommandComplete`` under the request's lower-case letter, or for lists an
``ArraySize`` packet, one packet per row and a closing ``CommandComplete`` (node info ``i``,
process info ``p``, pool status ``b`` — whose ArraySize carries a binary int32, the only
binary field).  libpcp reads an error's S, M and D fields without skipping the text after
S and M, so a message or detail must not start with 'S', 'M' or 'D' (a capital letter
there would be read as a field letter): the messages below start in lower case.

Pure: no Twisted, no sockets, no logging.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Optional, Union

from pgpool_tw.protocol.errors import ProtocolViolation

__all__ = [
    "MAX_PACKET",
    "PcpReader",
    "auth_ok",
    "command_complete",
    "error_packet",
    "health_check_stats_packet",
    "md5_answer",
    "node_count_packet",
    "node_info_packets",
    "packet",
    "parse_login",
    "pool_status_packets",
    "process_count_packet",
    "process_info_packets",
    "request_fields",
    "salt_packet",
]

#: pgpool-II's MAX_PCP_PACKET_LENGTH: a request's length field must be below it.
MAX_PACKET = 260

_HEADER = struct.Struct("!cI")
_INT = struct.Struct("!I")

Field = Union[str, bytes]


class PcpReader:
    """Cuts a byte stream into ``(type, body)`` requests, across any split of the chunks."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The whole requests ``data`` completes; raises ProtocolViolation on a length
        pgpool-II would refuse (then the connection is done: nothing after it is framed)."""
        buffer = self._buffer
        buffer += data
        out: list[tuple[bytes, bytes]] = []
        start = 0
        while len(buffer) - start >= _HEADER.size:
            kind, length = _HEADER.unpack_from(buffer, start)
            if length < _INT.size or length >= MAX_PACKET:
                raise ProtocolViolation("08P01", f"incorrect packet length ({length})")
            end = start + 1 + length
            if len(buffer) < end:
                break
            out.append((kind, bytes(buffer[start + _HEADER.size : end])))
            start = end
        del buffer[:start]
        return out


def _text(value: Field) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "replace")


def raw_packet(kind: bytes, body: bytes) -> bytes:
    return kind + _INT.pack(len(body) + _INT.size) + body


def packet(kind: bytes, *fields: Field) -> bytes:
    """A packet whose body is ``fields``, each NUL-terminated."""
    return raw_packet(kind, b"".join(_text(f) + b"\0" for f in fields))


def request_fields(body: bytes) -> list[str]:
    """A request's NUL-terminated arguments (a last one without its NUL is kept)."""
    parts = body.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "replace") for p in parts]


def parse_login(body: bytes) -> Optional[tuple[str, str]]:
    """``R``'s user and answer, or None when the body is not two NUL-terminated fields."""
    parts = body.split(b"\0")
    if len(parts) < 3:
        return None
    return parts[0].decode("utf-8", "replace"), parts[1].decode("ascii", "replace")


def md5_answer(stored: str, user: str, salt: bytes) -> str:
    """What a client that knows the password answers to ``salt``; ``stored`` is pcp.conf's
    md5hex(password)."""
    inner = hashlib.md5((stored + user).encode("utf-8")).hexdigest()
    return hashlib.md5(inner.encode("ascii") + salt).hexdigest()


def salt_packet(salt: bytes) -> bytes:
    return raw_packet(b"m", salt)


def auth_ok() -> bytes:
    return packet(b"r", "AuthenticationOK")


def command_complete(kind: bytes) -> bytes:
    """The plain success answer: ``c`` attach, ``d`` detach and promote, ``z`` reload,
    ``t`` stop."""
    return packet(kind, "CommandComplete")


def error_packet(message: str, detail: str = "", severity: str = "ERROR") -> bytes:
    """An ``E`` packet as pgpool-II's error report sends it: S, C (XX000), M and D fields."""
    fields = [b"S" + _text(severity), b"CXX000", b"M" + _text(message)]
    if detail:
        fields.append(b"D" + _text(detail))
    return raw_packet(b"E", b"".join(f + b"\0" for f in fields) + b"\0")


def node_count_packet(count: int) -> bytes:
    return packet(b"l", "CommandComplete", str(count))


def node_info_packets(rows: Iterable[Sequence[Field]]) -> bytes:
    """``i`` frames: each row is pgpool-II's 12 NodeInfo fields in its order (hostname,
    port, status number, quarantine, pg_status, weight, role number, pg_role, delay,
    replication_state, replication_sync_state, status change time in epoch seconds)."""
    rows = list(rows)
    out = [packet(b"i", "ArraySize", str(len(rows)))]
    out += [packet(b"i", "NodeInfo", *row) for row in rows]
    out.append(packet(b"i", "CommandComplete"))
    return b"".join(out)


def health_check_stats_packet(fields: Sequence[Field]) -> bytes:
    """``h``: pgpool-II's 20 health check stats fields, in POOL_HEALTH_CHECK_STATS' order."""
    return packet(b"h", "CommandComplete", *fields)


def process_count_packet(ids: Sequence[int]) -> bytes:
    return packet(b"n", "CommandComplete", str(len(ids)), *(str(i) for i in ids))


def process_info_packets(rows: Iterable[Sequence[Field]]) -> bytes:
    """``p`` frames: each row is pgpool-II's 17 ProcessInfo fields (POOL_REPORT_POOLS)."""
    rows = list(rows)
    out = [packet(b"p", "ArraySize", str(len(rows)))]
    out += [packet(b"p", "ProcessInfo", *row) for row in rows]
    out.append(packet(b"p", "CommandComplete"))
    return b"".join(out)


def pool_status_packets(rows: Iterable[tuple[str, str, str]]) -> bytes:
    """``b`` frames: ArraySize with a binary count, then name, value, description rows."""
    rows = list(rows)
    out = [raw_packet(b"b", b"ArraySize\0" + _INT.pack(len(rows)))]
    out += [packet(b"b", "ProcessConfig", *row) for row in rows]
    out.append(packet(b"b", "CommandComplete"))
    return b"".join(out)
