"""Result sets in text: the ones the pooler answers itself, and the rows it reads.

The pooler's own answers look like a server's: RowDescription with every column
``text``, one DataRow per row, CommandComplete (SHOW pool_nodes).  The rows it reads
are its own queries' answers (the replication check, read-your-writes), whose LSNs
come as PostgreSQL's ``X/Y`` text.  Nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Optional

from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.messages import ENCODING, ERRORS, INT32, cstring, decode, message

__all__ = [
    "command_complete",
    "data_row",
    "first_lsn",
    "lsn_from_text",
    "parse_data_row",
    "result_set",
    "row_description",
]

_TEXT_OID = 25
_FIELD = struct.Struct("!IhIhih")  # table oid, column, type oid, size, modifier, format
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")


def row_description(names: Sequence[str]) -> bytes:
    body = [_INT16.pack(len(names))]
    for name in names:
        body.append(cstring(name) + _FIELD.pack(0, 0, _TEXT_OID, -1, -1, 0))
    return message(b"T", b"".join(body))


def data_row(values: Sequence[Optional[str]]) -> bytes:
    body = [_INT16.pack(len(values))]
    for value in values:
        if value is None:
            body.append(_INT32.pack(-1))
        else:
            raw = value.encode(ENCODING, ERRORS)
            body.append(_INT32.pack(len(raw)) + raw)
    return message(b"D", b"".join(body))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstring(tag))


def result_set(names: Sequence[str], rows: Sequence[Sequence[Optional[str]]]) -> bytes:
    """A whole SELECT-like answer, without its ReadyForQuery."""
    parts = [row_description(names)]
    parts += [data_row(row) for row in rows]
    parts.append(command_complete(f"SELECT {len(rows)}"))
    return b"".join(parts)


def parse_data_row(body: bytes) -> tuple[Optional[str], ...]:
    """A DataRow body as text values (None for NULL); ProtocolViolation when malformed."""
    if len(body) < 2:
        raise ProtocolViolation("08P01", "DataRow too short")
    count = int.from_bytes(body[:2], "big", signed=True)
    pos = 2
    values: list[Optional[str]] = []
    for _ in range(count):
        if pos + 4 > len(body):
            raise ProtocolViolation("08P01", "DataRow ends inside a column length")
        length = INT32.unpack_from(body, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if pos + length > len(body):
            raise ProtocolViolation("08P01", "DataRow ends inside a column")
        values.append(decode(body[pos : pos + length]))
        pos += length
    return tuple(values)


def lsn_from_text(text: str) -> int:
    """PostgreSQL's ``X/Y`` pg_lsn text as a byte position; ValueError when it is not one."""
    high, slash, low = text.strip().partition("/")
    if not slash or not high or not low:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


def first_lsn(rows: list[bytes]) -> Optional[int]:
    """The LSN in the first column of the first of these DataRow bodies; None when there
    is none (no row, NULL, not an LSN)."""
    try:
        value = parse_data_row(rows[0])[0] if rows else None
        return lsn_from_text(value) if value is not None else None
    except (ProtocolViolation, ValueError, IndexError):
        return None
