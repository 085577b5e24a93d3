"""The one escape of client-supplied text before it reaches a log line.

A statement, a user or a database name comes from the client: a newline in it would start
what looks like a log line of its own, and other control characters could rewrite a
terminal.  ``printable`` turns each control character into a visible escape, so a logged
value is always one line.  Pure: no Twisted, no logging; every room may call it.
"""

from __future__ import annotations

__all__ = ["printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0, DEL, C1 (NEL among them) and the two Unicode line separators.
_CONTROL = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
_TABLE = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROL
}


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text  # the common case: nothing to copy
    return text.translate(_TABLE)
