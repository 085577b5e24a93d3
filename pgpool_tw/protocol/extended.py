"""The few fields a router reads from extended-protocol messages, and an LSN in a row.

Routing a session (``session/routed.py``) needs a Parse's statement name and text, a
Bind's portal and statement, the messages of a batch received so far, and a Parse
rewritten for another text.  Bodies
are read only as far as these fields; a message too short for them raises ValueError
(``bytes.index``) or IndexError, which the caller treats as a broken stream.  No I/O.
"""

from __future__ import annotations

from struct import Struct

from pgpool_tw.protocol import messages as m

__all__ = ["batch_messages", "bind_names", "parse_fields", "reparse"]

_LENGTH = Struct("!I").unpack_from
_INT16 = Struct("!h").unpack_from
_QUERY, _SYNC, _TERMINATE = ord("Q"), ord("S"), ord("X")


def batch_messages(first: bytes, buf: bytes | bytearray, after: int) -> list[tuple[int, bytes]]:
    """The batch's messages received so far: ``first``, then whole ones up to a Sync."""
    found = [(first[0], first)]
    if first[0] == _SYNC:
        return found
    pos, size = after, len(buf)
    while size - pos >= 5:
        end = pos + 1 + _LENGTH(buf, pos + 1)[0]
        if end > size:
            break
        kind = buf[pos]
        if kind in (_SYNC, _TERMINATE, _QUERY):
            break
        found.append((kind, bytes(buf[pos:end])))
        pos = end
    return found


def parse_fields(msg: bytes) -> tuple[bytes, str]:
    """A Parse message's statement name and query text."""
    name_end = msg.index(b"\0", 5)
    text_end = msg.index(b"\0", name_end + 1)
    return msg[5:name_end], msg[name_end + 1 : text_end].decode("utf-8", "replace")


def reparse(msg: bytes, text: str) -> bytes:
    """The same Parse (name, no parameter types) for another query text."""
    name_end = msg.index(b"\0", 5)
    body = msg[5 : name_end + 1] + m.cstring(text) + b"\x00\x00"
    return m.message(b"P", body)


def bind_names(msg: bytes) -> tuple[bytes, bytes]:
    """A Bind message's portal and statement names."""
    portal_end = msg.index(b"\0", 5)
    statement_end = msg.index(b"\0", portal_end + 1)
    return msg[5:portal_end], msg[portal_end + 1 : statement_end]
