"""pgpool.conf's syntax: lines of ``name = value``, quoting, comments, and ConfigError.

pgpool-II reads PostgreSQL's configuration syntax, so this module follows PostgreSQL's rules
for quoted strings.  It owns only the shape of a line; what a name means and which values it
takes belong to :mod:`pgpool_tw.config.settings`.  It must never import Twisted or log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple, Optional

__all__ = ["ConfigError", "Entry", "read_entries"]


class ConfigError(Exception):
    """A configuration that must not be used, told in one line an operator can act on.

    The shape is '<file>:<line>: <setting>: <what is wrong>; <what is allowed>', so an editor
    can jump to the line and the fix is in the message rather than in our source.
    """


class Entry(NamedTuple):
    """One ``name = value`` line: the name lower-cased, the value unquoted."""

    line: int
    name: str
    value: str


_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=?\s*")
_UNQUOTED = re.compile(r"[^\s#']+")
_OCTAL = re.compile(r"[0-7]{1,3}")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def read_entries(text: str, path: str) -> Iterator[Entry]:
    """Every setting line of ``text`` in order; a malformed line raises ConfigError."""
    # split("\n"), not splitlines(): the latter also breaks on form feeds and U+2028, and then
    # our line numbers would not match the user's editor.
    for number, line in enumerate(text.split("\n"), start=1):
        entry = _split_line(line.rstrip("\r"), f"{path}:{number}")
        if entry is not None:
            yield Entry(number, *entry)


def _read_quoted(line: str, pos: int, where: str, name: str) -> tuple[str, int]:
    """PostgreSQL's string rules, which pgpool-II shares: '' and backslash escapes."""
    out: list[str] = []
    while pos < len(line):
        char = line[pos]
        if char == "'":
            if line.startswith("'", pos + 1):
                out.append("'")
                pos += 2
                continue
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(line):
            octal = _OCTAL.match(line, pos + 1)
            if octal is not None:
                out.append(chr(int(octal.group(), 8)))
                pos = octal.end()
            else:
                out.append(_ESCAPES.get(line[pos + 1], line[pos + 1]))
                pos += 2
            continue
        out.append(char)
        pos += 1
    raise ConfigError(
        f"{where}: {name}: unterminated quoted string; close it with ' on the same line"
    )


def _split_line(line: str, where: str) -> Optional[tuple[str, str]]:
    """One line to (lower-case name, value text), or None for a blank or comment line."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    match = _NAME.match(line)
    if match is None:
        raise ConfigError(
            f"{where}: syntax error at {stripped[:40]!r}; expected 'name = value' or a # comment"
        )
    name = match.group(1).lower()
    pos = match.end()
    if line.startswith("'", pos):
        value, pos = _read_quoted(line, pos + 1, where, name)
    else:
        token = _UNQUOTED.match(line, pos)
        if token is None:
            raise ConfigError(f"{where}: {name}: missing value; expected 'name = value'")
        value, pos = token.group(), token.end()
    rest = line[pos:].strip()
    if rest and not rest.startswith("#"):
        raise ConfigError(
            f"{where}: {name}: unexpected {rest[:40]!r} after the value; "
            "quote a value that holds spaces or quotes"
        )
    return name, value
