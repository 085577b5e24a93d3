"""pgpool-II's SQL commands: which query texts the pooler answers itself.

``SHOW pool_nodes`` and the other ``SHOW pool_*`` commands are PostgreSQL syntax (a
``VariableShowStmt`` whose name pgpool-II owns); ``PGPOOL SHOW``, ``PGPOOL SET`` and
``PGPOOL RESET`` are not, so they are read from PostgreSQL's own scanner's tokens
(pglast), never by regular expressions.  As in pgpool-II, they are commands of the
simple query protocol, alone in their query text (a trailing ``;`` allowed); anything
else goes to PostgreSQL, which answers as it would without a pooler.

Session trackers stop at a Query whose text starts with one of ``protocol.relay``'s
``LOCAL_WORDS`` so that Python sees it; every text ``local_command`` accepts starts so
(``tests/unit/test_pgpool_sql.py`` holds both to that).  Pure and cached by text.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

try:
    from pglast import parser as _pg
except ImportError:  # PyPy, where pglast does not build: PostgreSQL answers everything
    _pg = None  # type: ignore[assignment]

__all__ = ["LOCAL_COMMANDS", "LocalCommand", "local_command"]

#: pgpool-II's own SHOW commands.
LOCAL_COMMANDS = frozenset(
    {
        "pool_nodes",
        "pool_status",
        "pool_version",
        "pool_processes",
        "pool_pools",
        "pool_cache",
        "pool_health_check_stats",
        "pool_backend_stats",
    }
)

SHOW, PGPOOL_SHOW, PGPOOL_SET, PGPOOL_RESET = "show", "pgpool show", "pgpool set", "pgpool reset"


class LocalCommand(NamedTuple):
    """One command the pooler answers: ``verb`` (SHOW, PGPOOL SHOW/SET/RESET), the
    setting or SHOW name in lower case (``all`` for ALL), and PGPOOL SET's value
    (None: DEFAULT)."""

    verb: str
    name: str
    value: Optional[str] = None


_CACHE: dict[str, Optional[LocalCommand]] = {}
_CACHE_SIZE = 256
#: Tokens a PGPOOL SET value may be: pgpool.conf's words, numbers and strings.
_VALUE_TOKENS = frozenset({"IDENT", "SCONST", "ICONST", "FCONST", "TRUE_P", "FALSE_P", "ON"})


def local_command(text: str) -> Optional[LocalCommand]:
    """The command of a query text the pooler answers, or None (PostgreSQL's)."""
    found = _CACHE.get(text, _CACHE)
    if found is not _CACHE:
        return found  # type: ignore[return-value]
    try:
        command = _read(text)
    except Exception:  # the scanner refused the text: PostgreSQL's to answer
        command = None
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    if len(text) <= 1024:
        _CACHE[text] = command
    return command


def _read(text: str) -> Optional[LocalCommand]:
    if _pg is None:
        return None
    raw = text.encode("utf-8")
    tokens = [(t.name, raw[t.start : t.end + 1].decode("utf-8")) for t in _pg.scan(text)]
    while tokens and tokens[-1][0] == "ASCII_59":  # trailing semicolons
        tokens.pop()
    if len(tokens) < 2:
        return None
    first, second = tokens[0], tokens[1]
    if first[0] == "SHOW" and len(tokens) == 2 and second[0] == "IDENT":
        name = _identifier(second[1])
        return LocalCommand(SHOW, name) if name in LOCAL_COMMANDS else None
    if first[0] != "IDENT" or first[1].lower() != "pgpool":
        return None
    rest = tokens[2:]
    if second[0] in ("SHOW", "RESET") and len(rest) == 1:
        kind, word = rest[0]
        if kind == "ALL":
            name = "all"
        elif kind == "IDENT":
            name = _identifier(word)
        else:
            return None
        return LocalCommand(PGPOOL_SHOW if second[0] == "SHOW" else PGPOOL_RESET, name)
    if second[0] == "SET" and len(rest) == 3 and rest[0][0] == "IDENT":
        if rest[1][0] not in ("TO", "ASCII_61"):
            return None
        kind, word = rest[2]
        if kind == "DEFAULT":
            value = None
        elif kind in _VALUE_TOKENS:
            value = _unquote(word) if kind == "SCONST" else word
        else:
            return None
        return LocalCommand(PGPOOL_SET, _identifier(rest[0][1]), value)
    return None


def _identifier(word: str) -> str:
    """An identifier as PostgreSQL folds it: quoted kept, unquoted lower-cased."""
    if word.startswith('"'):
        return word[1:-1].replace('""', '"')
    return word.lower()


def _unquote(word: str) -> str:
    return word[1:-1].replace("''", "'")
