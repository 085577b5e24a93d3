"""Result sets the pooler answers itself (SHOW pool_nodes): text columns only.

The pooler's own answers look like a server's: RowDescription with every column
``text``, one DataRow per row, CommandComplete.  Nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Optional

from pgpool_tw.protocol.messages import ENCODING, ERRORS, cstring, message

__all__ = ["command_complete", "data_row", "result_set", "row_description"]

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
