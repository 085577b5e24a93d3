"""How the routing settings read: pgpool-II's regular-expression lists and redirect lists.

pgpool-II takes users' regular expressions in these settings: ``write_function_list`` and
``read_only_function_list`` (function names, comma-separated),
``primary_routing_query_pattern_list`` (whole SQL texts, ';'-separated, '\\;' for a ';'
inside a pattern) and the ``*_redirect_preference_list`` settings (``name:node(weight)``
pairs, comma-separated, the name a regular expression).  pgpool-II anchors every pattern
(it adds ``^`` unless the pattern starts with one and ``$`` unless it ends with one) and
matches ignoring case; so do we, and we compile each pattern here so that a bad one stops
the file at its line rather than at the first query.  These are the user's regexes over
names and SQL text; classifying SQL itself is pglast's job elsewhere.

pgpool-II compiles POSIX extended expressions and we compile Python's; the two agree on
everything a pattern list normally holds (``.*``, bracket sets, alternation, repeats).  POSIX
character classes (``[[:digit:]]``) are turned into Python's sets; Python's escapes (``\\d``),
which POSIX lacks, keep Python's meaning.  Pure: no Twisted, no logging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

from pgpool_tw.config.backends import MAX_BACKENDS
from pgpool_tw.config.values import BadValue, Kind

__all__ = [
    "FUNCTION_LIST",
    "QUERY_PATTERN_LIST",
    "PRIMARY",
    "REDIRECT_LIST",
    "REGEX_SETTINGS",
    "STANDBY",
    "Redirect",
    "anchored",
    "compile_pattern",
    "parse_function_list",
    "parse_query_pattern_list",
    "parse_redirect_list",
    "raw_value",
    "split_entries",
]

PRIMARY = "primary"
STANDBY = "standby"


@dataclass(frozen=True)
class Redirect:
    """One ``name:node(weight)`` entry of a ``*_redirect_preference_list``.

    ``target`` is a node number, ``'primary'`` or ``'standby'`` (a standby chosen by weight).
    ``weight`` (0 to 1, pgpool-II's "load balance ratio") is the share of reads sent to
    ``target``; the rest are load balanced as usual.  The first entry whose pattern matches
    wins, as in pgpool-II.
    """

    pattern: re.Pattern[str]
    target: Union[int, str]
    weight: float = 1.0

    def matches(self, name: str) -> bool:
        return self.pattern.match(name) is not None


def anchored(pattern: str) -> str:
    """pgpool-II's rule: '^' added unless the pattern starts with it, '$' unless it ends
    with it, so 'nextval' never matches 'my_nextval_wrapper'."""
    if not pattern.startswith("^"):
        pattern = "^" + pattern
    if not pattern.endswith("$"):
        pattern += "$"
    return pattern


# POSIX character classes, as they read inside a bracket expression, in Python's words.
_POSIX_CLASSES = {
    "[:alnum:]": "0-9A-Za-z",
    "[:alpha:]": "A-Za-z",
    "[:blank:]": " \\t",
    "[:cntrl:]": "\\x00-\\x1f\\x7f",
    "[:digit:]": "0-9",
    "[:graph:]": "!-~",
    "[:lower:]": "a-z",
    "[:print:]": " -~",
    "[:punct:]": "!-/:-@\\[-`{-~",
    "[:space:]": " \\t\\n\\r\\f\\v",
    "[:upper:]": "A-Z",
    "[:xdigit:]": "0-9A-Fa-f",
}
_POSIX_CLASS = re.compile("|".join(re.escape(name) for name in _POSIX_CLASSES))


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern is checked as written, so an error's position is the user's; then
    anchored as pgpool-II anchors it ('a|b' becomes '^a|b$' there too)."""
    pattern = _POSIX_CLASS.sub(lambda m: _POSIX_CLASSES[m.group()], pattern)
    try:
        re.compile(pattern)
    except re.error as e:
        raise BadValue(f"invalid regular expression {pattern!r} ({e})") from None
    return re.compile(anchored(pattern), re.IGNORECASE)


def parse_function_list(text: str) -> tuple[re.Pattern[str], ...]:
    """Comma-separated function-name patterns; spaces around each are not part of it."""
    return tuple(compile_pattern(item.strip()) for item in text.split(",") if item.strip())


def parse_query_pattern_list(text: str) -> tuple[re.Pattern[str], ...]:
    """';'-separated SQL patterns.  A backslash keeps the next character in the pattern, so
    '\\;' is a ';' inside one (the backslash stays: to the regex it escapes the ';'), and
    "\\'" is a quote, as pgpool-II reads them."""
    patterns: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            current.append("'" if following == "'" else char + following)
        elif char == ";":
            patterns.append("".join(current))
            current = []
        else:
            current.append(char)
    patterns.append("".join(current))
    return tuple(compile_pattern(p) for p in patterns if p.strip())


def split_entries(text: str, expected: str) -> list[tuple[str, str, str]]:
    """(entry, name, value) for each of pgpool-II's comma-separated 'name:value' entries.

    The name ends at the first ':', so neither it nor a value can hold ',' or ':' (as in
    pgpool-II); spaces around an entry and its name are not part of them.  ``expected`` says
    what an entry should look like, for the error an entry without a name gets.
    """
    found = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, colon, rest = item.partition(":")
        name = name.strip()
        if not colon or not name:
            raise BadValue(f"invalid entry {item!r}; expected {expected}")
        found.append((item, name, rest))
    return found


def _parse_redirect(item: str, name: str, rest: str) -> Redirect:
    target_text, paren, weight_text = rest.partition("(")
    target_text = target_text.strip()
    weight = 1.0
    if paren:
        if not weight_text.rstrip().endswith(")"):
            raise BadValue(f"invalid entry {item!r}; the weight needs a closing ')'")
        weight_text = weight_text.rstrip()[:-1].strip()
        try:
            weight = float(weight_text)
        except ValueError:
            weight = -1.0
        if not re.fullmatch(r"[0-9.]+", weight_text) or not 0.0 <= weight <= 1.0:
            raise BadValue(
                f"invalid weight {weight_text!r} in {item!r}; expected a number from 0 to 1"
            )
    target: Union[int, str]
    if target_text.lower() in (PRIMARY, STANDBY):
        target = target_text.lower()
    elif target_text.isascii() and target_text.isdigit() and int(target_text) < MAX_BACKENDS:
        target = int(target_text)
    else:
        raise BadValue(
            f"invalid node {target_text!r} in {item!r}; expected primary, standby or a "
            f"node number from 0 to {MAX_BACKENDS - 1}"
        )
    return Redirect(compile_pattern(name), target, weight + 0.0)


def parse_redirect_list(text: str) -> tuple[Redirect, ...]:
    """pgpool-II's "name:node(weight)" pairs, comma-separated; '' is none."""
    entries = split_entries(text, "'name:node' or 'name:node(weight)'")
    return tuple(_parse_redirect(*entry) for entry in entries)


FUNCTION_LIST = Kind(
    parse_function_list, "expected function names or regular expressions separated by ','"
)
QUERY_PATTERN_LIST = Kind(
    parse_query_pattern_list, "expected regular expressions over SQL text separated by ';'"
)
REDIRECT_LIST = Kind(
    parse_redirect_list,
    "expected 'name:node(weight)' entries separated by ',' (node: a number, primary or "
    "standby; weight from 0 to 1, optional)",
)

# Settings whose values hold users' regular expressions, where a backslash means a regex
# escape: pgpool-II's reader keeps backslashes in quoted values ('get_\d+'), and so must we.
REGEX_SETTINGS = frozenset(
    {
        "write_function_list",
        "read_only_function_list",
        "black_function_list",
        "white_function_list",
        "primary_routing_query_pattern_list",
        "black_query_pattern_list",
        "user_redirect_preference_list",
        "database_redirect_preference_list",
        "app_name_redirect_preference_list",
    }
)

_QUOTED_VALUE = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=?\s*'((?:[^'\\]|\\.)*)'")


def raw_value(line: str, value: str) -> str:
    """A quoted value as pgpool-II's reader sees it: the quotes stripped, nothing else.

    The line syntax (PostgreSQL's) turns '\\d' into 'd'; pgpool-II keeps such text as it is,
    and a regex needs it kept.  ``value`` (the unescaped text) is returned for an unquoted
    value, or for a quoted one that uses '' (which pgpool-II's reader does not take).
    """
    match = _QUOTED_VALUE.match(line)
    if match is None or line.startswith("'", match.end()):
        return value
    return match.group(1)
