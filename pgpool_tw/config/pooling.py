"""The pool modes: ``pool_mode`` and its per-user and per-database lists.

PgBouncer names the setting ``pool_mode`` and lets a ``[databases]`` or ``[users]`` entry
override it.  pgpool.conf has no sections, so the overrides take pgpool-II's own shape for
per-user and per-database settings, that of ``*_redirect_preference_list``:
``user_pool_mode_list = 'batch_.*:session,app:transaction'``.  The names are pgpool-II's
patterns, read by :mod:`.routing`'s reader (anchored, matched ignoring case), so a pattern
means here what it means in a redirect list.  A user's entry beats a database's, as a
``[users]`` pool_mode beats a ``[databases]`` one in PgBouncer; in each list the first
match wins, as in pgpool-II's lists; a login neither list names gets ``pool_mode``.

PgBouncer's third mode, ``statement``, is refused at load rather than run as another: it
refuses multi-statement transactions, which neither of the others does, so a file asking
for it asks for behaviour pgpool-tw would not give.

This module owns how the modes read and which mode a login gets; what a mode does belongs to
the session and pool code.  Pure: no Twisted, no logging.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Callable

from pgpool_tw.config.routing import compile_pattern, split_entries
from pgpool_tw.config.values import BadValue, Kind

__all__ = [
    "POOL_MODE",
    "POOL_MODES",
    "POOL_MODE_LIST",
    "POOL_MODE_LISTS",
    "SESSION",
    "TRANSACTION",
    "PoolModeRule",
    "mode_lookup",
    "parse_pool_mode",
    "parse_pool_mode_list",
    "pool_mode_for",
]

SESSION = "session"
TRANSACTION = "transaction"
POOL_MODES = (SESSION, TRANSACTION)

# How many (user, database) answers one configuration keeps: far more pairs than a real
# cluster has, few enough that a client trying random names cannot grow memory.
_CACHED_LOGINS = 4096


@dataclass(frozen=True)
class PoolModeRule:
    """One ``name:mode`` entry of ``user_pool_mode_list`` or ``database_pool_mode_list``."""

    pattern: re.Pattern[str]
    mode: str

    def matches(self, name: str) -> bool:
        return self.pattern.match(name) is not None


def parse_pool_mode(text: str) -> str:
    """'session' or 'transaction'; PgBouncer reads its enums ignoring case, so do we."""
    word = text.strip().lower()
    if word == "statement":
        raise BadValue(
            "statement pooling is not supported by pgpool-tw; expected session or transaction"
        )
    if word not in POOL_MODES:
        raise ValueError(text)
    return word


def parse_pool_mode_list(text: str) -> tuple[PoolModeRule, ...]:
    """'name:mode' entries, comma-separated, the name a pattern; '' is none."""
    rules = []
    for item, name, rest in split_entries(text, "'name:session' or 'name:transaction'"):
        try:
            mode = parse_pool_mode(rest)
        except BadValue as e:
            raise BadValue(f"invalid mode {rest.strip()!r} in {item!r}: {e}") from None
        except ValueError:
            raise BadValue(
                f"invalid mode {rest.strip()!r} in {item!r}; expected session or transaction"
            ) from None
        rules.append(PoolModeRule(compile_pattern(name), mode))
    return tuple(rules)


POOL_MODE = Kind(parse_pool_mode, "expected session or transaction")
POOL_MODE_LIST = Kind(
    parse_pool_mode_list,
    "expected 'name:mode' entries separated by ',' (name: a regular expression; "
    "mode: session or transaction)",
)

# The settings above whose values hold users' regular expressions: the reader must keep
# their backslashes, as for routing.REGEX_SETTINGS.
POOL_MODE_LISTS = frozenset({"user_pool_mode_list", "database_pool_mode_list"})


def pool_mode_for(
    default: str,
    users: tuple[PoolModeRule, ...],
    databases: tuple[PoolModeRule, ...],
    user: str,
    database: str,
) -> str:
    """The mode a login as ``user`` to ``database`` gets: the first user entry that matches,
    else the first database entry, else ``default``."""
    for rule in users:
        if rule.pattern.match(user) is not None:
            return rule.mode
    for rule in databases:
        if rule.pattern.match(database) is not None:
            return rule.mode
    return default


def mode_lookup(
    default: str, users: tuple[PoolModeRule, ...], databases: tuple[PoolModeRule, ...]
) -> Callable[[str, str], str]:
    """:func:`pool_mode_for` with these settings bound, cached by (user, database).

    Made once per configuration (Config.pool_mode_for keeps it), so the cache key is the two
    names alone: hashing the rules on every login would cost as much as matching them.  A
    reload makes a new Config, hence a new lookup, so no answer outlives its settings.
    """
    if not users and not databases:
        return lambda user, database: default

    @functools.lru_cache(maxsize=_CACHED_LOGINS)
    def lookup(user: str, database: str) -> str:
        return pool_mode_for(default, users, databases, user, database)

    return lookup
