"""How pgpool.conf values are read: integers, numbers, times, booleans, lists, choices.

Each reader is a :class:`Kind`: a function that raises ValueError on a bad value, and the
words that tell a user what was expected, so every bad value gets the same one-line shape.
Pure functions only: no Twisted, no logging.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple, Optional

__all__ = [
    "BOOLEAN",
    "BOOLEANS",
    "BYTES",
    "DIRECTORIES",
    "MILLISECONDS",
    "TIME",
    "BadValue",
    "Kind",
    "choice",
    "integer",
    "one_of",
    "parse_boolean",
    "parse_bytes",
    "parse_real",
    "parse_time",
    "split_on",
]


class Kind(NamedTuple):
    """How to read one type of value, and the words that tell a user what was expected."""

    parse: Callable[[str], Any]  # raises ValueError on a bad value
    allowed: str


class BadValue(ValueError):
    """A bad value whose own words say more than the kind's "expected ..." (a regular
    expression's error, say); the message replaces the generic one after the setting name."""


_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_REAL = re.compile(_NUMBER + r"\Z")
# pgpool-II 4.x, like PostgreSQL, allows whitespace between number and unit, and the unit
# is case-sensitive ('5min', '5 min'; not '5MIN').
_TIME = re.compile(rf"({_NUMBER})\s*(ms|s|min|h|d)?\Z")
_SECONDS_PER_UNIT: dict[Optional[str], float] = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
BOOLEANS = {
    "on": True,
    "true": True,
    "yes": True,
    "1": True,
    "off": False,
    "false": False,
    "no": False,
    "0": False,
}


def integer(low: int, high: Optional[int] = None) -> Kind:
    """Integers are matched by regex first because int() also accepts '1_000' and ' 1 '."""

    def parse(text: str) -> int:
        text = text.strip()
        if not _INTEGER.match(text):
            raise ValueError(text)
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError(text)
        return value

    if high is None:
        return Kind(parse, f"expected an integer >= {low}")
    return Kind(parse, f"expected an integer from {low} to {high}")


def parse_real(text: str) -> float:
    """float() alone would let 'nan', 'inf' and '1_0' through."""
    text = text.strip()
    if not _REAL.match(text):
        raise ValueError(text)
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise ValueError(text)
    return value + 0.0  # turns -0.0 into 0.0


def parse_time(text: str, unit: str = "s") -> float:
    """Seconds, so that callers never need to know which unit the file used; ``unit`` is the
    one a bare number is in (pgpool-II's delay_threshold_by_time counts milliseconds)."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(text)
    seconds = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2) or unit]
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(text)
    return seconds + 0.0


# PostgreSQL's memory units, which pgpool-II takes for byte settings: case-sensitive, 1024s.
_BYTES = re.compile(r"([0-9]+)\s*(B|kB|MB|GB|TB)?\Z")
_BYTES_PER_UNIT = {None: 1, "B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_bytes(text: str) -> int:
    """Bytes, so that callers compare with WAL positions whatever unit the file used."""
    match = _BYTES.match(text.strip())
    if match is None:
        raise ValueError(text)
    return int(match.group(1)) * _BYTES_PER_UNIT[match.group(2)]


def parse_boolean(text: str) -> bool:
    """pgpool-II's spellings; prefixes ('of') are refused since nobody needs them."""
    try:
        return BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


def split_on(separator: str) -> Callable[[str], tuple[str, ...]]:
    """Lists are written as one quoted string; '' is how a user says 'none at all'."""

    def parse(text: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in text.split(separator) if item.strip())

    return parse


def one_of(*choices: str) -> Callable[[str], str]:
    """A word from a fixed list, spelt exactly as pgpool-II (or libpq) spells it."""

    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(value)
        return value

    return parse


def choice(*choices: str) -> Callable[[str], str]:
    """A word from a pgpool-II enum; pgpool-II compares those ignoring case."""

    def parse(value: str) -> str:
        word = value.strip().lower()
        if word not in choices:
            raise ValueError(value)
        return word

    return parse


TIME = Kind(
    parse_time, "expected a time >= 0 in seconds, or with a unit ms, s, min, h or d (e.g. 5min)"
)
BOOLEAN = Kind(parse_boolean, "expected on/off, true/false, yes/no or 1/0")
DIRECTORIES = Kind(split_on(","), "expected a comma-separated list of directories")
MILLISECONDS = Kind(
    lambda text: parse_time(text, "ms"),
    "expected a time >= 0 in milliseconds, or with a unit ms, s, min, h or d (e.g. 10s)",
)
BYTES = Kind(parse_bytes, "expected a number of bytes >= 0, or with a unit B, kB, MB, GB or TB")
