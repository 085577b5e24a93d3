"""What a statement leaves behind in its server session: the rule behind transaction
pooling's automatic pinning (issue #18; ``session/transaction/`` asks it).

In transaction pooling a client's server goes back to the pool when ReadyForQuery says
idle.  A statement that leaves state in the server session must keep the client on that
server (pin it) until the state is gone, or another client would inherit it and this one
would lose it.  This module says, per query text, by PostgreSQL's own parser (pglast), what
a statement pins, what it clears, and which settings are cheaper to replay than to pin.
It holds no session state: the session adds the transaction state (a SET inside a
transaction block that later rolls back leaves nothing) and counts what is pinned.

Rules:

- ``set``: ``SET name`` (not LOCAL, not TRANSACTION or CONSTRAINTS) of a setting not in
  ``REPLAYABLE``; ``set_config(name, value, is_local)`` unless ``is_local`` is a constant
  true (even for a REPLAYABLE name: the call is no statement to run again); cleared by
  ``RESET ALL``.
- ``replay`` instead of a pin: ``SET`` / ``RESET`` of a ``REPLAYABLE`` setting (the
  parameters PostgreSQL reports in ParameterStatus, plus search_path and
  extra_float_digits, which drivers set at connect): the statement's own text, to be run
  on the next server the client lands on.  The rule: a setting whose whole effect is its
  value, set by a statement the pooler can run again anywhere.
- ``role``: ``SET ROLE`` / ``SET SESSION AUTHORIZATION``; cleared by their ``RESET``.
- ``listen``: ``LISTEN``; cleared by ``UNLISTEN *``.
- ``advisory_lock``: a session-level ``pg_advisory_lock``, ``pg_advisory_lock_shared``,
  ``pg_try_advisory_lock`` or ``pg_try_advisory_lock_shared`` (the ``_xact_`` ones end with
  the transaction); cleared by ``pg_advisory_unlock_all()`` (a single unlock may leave
  others, so it clears nothing).
- ``temp_table``: ``CREATE TEMP`` table, view, sequence or ``CREATE TEMP TABLE AS``;
  cleared by ``DISCARD TEMP``.
- ``hold_cursor``: ``DECLARE … WITH HOLD``; cleared by ``CLOSE ALL``.
- ``load``: ``LOAD`` (a library stays loaded); nothing clears it.
- SQL prepared statements are no pin: ``sql`` reports, statement by statement, each
  ``PREPARE name`` (with the statement's own text, to be run again on another server),
  ``EXECUTE name`` (alone, or under ``EXPLAIN`` / ``CREATE TABLE AS``) and ``DEALLOCATE
  name``, and the session carries them across servers (``session/sql_prepared.py``).  A
  ``PREPARE`` alone leaves no other pin: its statement runs at ``EXECUTE``, so its pins
  are ``runs``, taken there; in a text of several statements they count at once (the
  text may execute it).  ``DEALLOCATE ALL`` clears ``prepared`` (the pin the session
  takes when it cannot tell what a failed text left) and is reported in ``deallocate``
  as "", as ``DEALLOCATE name`` is by its name (the session's own protocol-level
  statements never exist under the client's name on a server).
- ``DISCARD ALL`` clears everything (``ALL``).
- Text that does not parse: ``unparsed``, a pin nothing clears (the safe side).

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from pgpool_tw.cluster.classify import AVAILABLE, normalize, parse_statements

__all__ = [
    "ADVISORY_LOCK",
    "ALL",
    "DEALLOCATE",
    "EXECUTE",
    "AVAILABLE",
    "HOLD_CURSOR",
    "LISTEN",
    "LOAD",
    "NOTHING",
    "PREPARE",
    "PREPARED",
    "REPLAYABLE",
    "ROLE",
    "SET",
    "TEMP_TABLE",
    "UNPARSED",
    "StateEffect",
    "shaped_effect",
    "state_effect",
]

SET, ROLE, LISTEN, ADVISORY_LOCK = "set", "role", "listen", "advisory_lock"
TEMP_TABLE, HOLD_CURSOR, LOAD, UNPARSED = "temp_table", "hold_cursor", "load", "unparsed"
PREPARED = "prepared"
#: What a statement does with an SQL prepared statement (``StateEffect.sql``).
PREPARE, EXECUTE, DEALLOCATE = "prepare", "execute", "deallocate"
#: What DISCARD ALL clears: every reason.
ALL = "all"

#: Settings replayed on the next server rather than pinned (lower case, as pglast gives).
REPLAYABLE = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "standard_conforming_strings",
        "search_path",
        "extra_float_digits",
    }
)

_SESSION_LOCKS = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    }
)
#: DECLARE's CURSOR_OPT_HOLD bit (PostgreSQL's parsenodes.h).
_CURSOR_OPT_HOLD = 0x0020
#: Texts remembered (a bounded cache: the text is the key).
CACHE_SIZE = 10000


@dataclass(frozen=True)
class StateEffect:
    """What one query text does to its server session."""

    #: Reasons it pins the client to its server.
    pins: frozenset[str] = frozenset()
    #: Reasons it clears (``ALL``: every one, DISCARD ALL).
    clears: frozenset[str] = frozenset()
    #: Statements to run again on another server (SET of a REPLAYABLE setting), with the
    #: setting each is about; a RESET of one has the text "" (back to the login's value).
    replay: tuple[tuple[str, str], ...] = ()
    #: The names of ``DEALLOCATE name`` statements; "" for ``DEALLOCATE ALL``.
    deallocate: tuple[str, ...] = ()
    #: SQL prepared statements used, in order: (PREPARE, name, the statement's text),
    #: (EXECUTE, name, "") or (DEALLOCATE, name, ""); the name "" for DEALLOCATE ALL
    #: and DISCARD ALL (what follows them in the text counts, what precedes them not).
    sql: tuple[tuple[str, str, str], ...] = ()
    #: A single PREPARE: the pins its statement leaves each time it is executed.
    runs: frozenset[str] = frozenset()
    #: The text holds more than one statement (what failed in it is not known).
    several: bool = False


_NOTHING = StateEffect()
#: What most statements leave: nothing.
NOTHING = _NOTHING
_UNPARSED = StateEffect(pins=frozenset({UNPARSED}))
_cache: OrderedDict[str, StateEffect] = OrderedDict()
#: Effects by shape (pglast's normalize: constants as $n), for texts whose effect no
#: constant changes: pgbench -S sends a new text every time, one shape.
_shapes: dict[str, StateEffect] = {}


def state_effect(text: str) -> StateEffect:
    """The effect of ``text`` (one or more statements), cached by text, or by shape when
    no constant in it matters (no replayed SET, which carries its own text, and no
    set_config call, whose third argument is read)."""
    return shaped_effect(text)[0]


def shaped_effect(text: str) -> tuple[StateEffect, bool]:
    """``state_effect``, and whether every text of the same shape (pglast's normalize, or
    any finer key: the C loop's shape key) has the same effect."""
    found = _cache.get(text)
    if found is not None:
        return found, False
    shape = normalize(text)
    if shape is not None:
        found = _shapes.get(shape)
        if found is not None:
            return found, True
    effect, shapeable = _effect(text)
    if shapeable and shape is not None:
        if len(_shapes) >= CACHE_SIZE:
            _shapes.clear()
        _shapes[shape] = effect
        return effect, True
    _cache[text] = effect
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return effect, False


def _effect(text: str) -> tuple[StateEffect, bool]:
    """The effect, and whether texts of the same shape share it."""
    try:
        statements = parse_statements(text)
    except Exception:  # pglast's ParseError, no pglast (PyPy), anything odd: the safe side
        return _UNPARSED, False
    pins: set[str] = set()
    clears: set[str] = set()
    replay: list[tuple[str, str]] = []
    deallocate: list[str] = []
    sql: list[tuple[str, str, str]] = []
    runs: set[str] = set()
    constants = [False]  # a rule read a constant (set_config's is_local)
    several = len(statements) > 1
    for item in statements:
        node = item.get("stmt", {})
        start = item.get("stmt_location", 0)
        length = item.get("stmt_len", 0) or len(text) - start
        own = text[start : start + length].strip()
        _statement(node, own, pins, clears, replay)
        prepare = node.get("PrepareStmt")
        if isinstance(prepare, dict):
            sql.append((PREPARE, str(prepare.get("name", "")), own))
            # Its statement runs at EXECUTE; in a text of several statements, maybe now.
            _functions(prepare.get("query"), pins if several else runs, clears, constants)
            continue
        _functions(node, pins, clears, constants)
        body = node.get("DeallocateStmt")
        if isinstance(body, dict):
            name = "" if body.get("isall") else str(body.get("name", ""))
            deallocate.append(name)
            sql.append((DEALLOCATE, name, ""))
        elif (node.get("DiscardStmt") or {}).get("target") == "DISCARD_ALL":
            sql.append((DEALLOCATE, "", ""))
        executed = _executed(node)
        if executed is not None:
            sql.append((EXECUTE, executed, ""))
    # A PREPARE carries its own text: no other text shares its effect.
    shapeable = not replay and not constants[0] and all(use[2] == "" for use in sql)
    if not (pins or clears or replay or deallocate or sql):
        return _NOTHING, shapeable
    effect = StateEffect(
        frozenset(pins),
        frozenset(clears),
        tuple(replay),
        tuple(deallocate),
        tuple(sql),
        frozenset(runs),
        several,
    )
    return effect, shapeable


def _executed(node: dict[str, Any]) -> Optional[str]:
    """The prepared statement ``EXECUTE name`` runs, alone or as EXPLAIN's or CREATE
    TABLE AS's query (the only statements that may hold one)."""
    for kind in ("ExplainStmt", "CreateTableAsStmt"):
        outer = node.get(kind)
        if isinstance(outer, dict):
            node = outer.get("query") or {}
            break
    execute = node.get("ExecuteStmt") if isinstance(node, dict) else None
    if isinstance(execute, dict):
        return str(execute.get("name", ""))
    return None


def _statement(
    node: dict[str, Any],
    text: str,
    pins: set[str],
    clears: set[str],
    replay: list[tuple[str, str]],
) -> None:
    kind, body = next(iter(node.items())) if len(node) == 1 else (None, {})
    if kind == "VariableSetStmt":
        _variable_set(body, text, pins, clears, replay)
    elif kind == "ListenStmt":
        pins.add(LISTEN)
    elif kind == "UnlistenStmt" and not body.get("conditionname"):
        clears.add(LISTEN)
    elif kind == "DeclareCursorStmt" and body.get("options", 0) & _CURSOR_OPT_HOLD:
        pins.add(HOLD_CURSOR)
    elif kind == "ClosePortalStmt" and not body.get("portalname"):
        clears.add(HOLD_CURSOR)
    elif kind == "DiscardStmt":
        target = body.get("target", "")
        if target == "DISCARD_ALL":
            clears.add(ALL)
        elif target == "DISCARD_TEMP":
            clears.add(TEMP_TABLE)
    elif kind == "LoadStmt":
        pins.add(LOAD)
    elif kind == "DeallocateStmt" and body.get("isall"):
        clears.add(PREPARED)
    elif _temporary(kind, body):
        pins.add(TEMP_TABLE)


def _variable_set(
    body: dict[str, Any],
    text: str,
    pins: set[str],
    clears: set[str],
    replay: list[tuple[str, str]],
) -> None:
    kind = body.get("kind", "")
    name = body.get("name", "")
    if kind == "VAR_RESET_ALL":
        clears.add(SET)
        return
    if body.get("is_local") or name.lower().startswith("transaction"):
        return  # SET LOCAL, SET TRANSACTION …: gone with the transaction
    if name in ("role", "session_authorization"):
        (clears if kind == "VAR_RESET" else pins).add(ROLE)
    elif name in REPLAYABLE:
        replay.append((name, "" if kind == "VAR_RESET" else text))
    elif kind != "VAR_RESET":
        pins.add(SET)


def _temporary(kind: Optional[str], body: dict[str, Any]) -> bool:
    """CREATE TEMP TABLE / VIEW / SEQUENCE / TABLE AS."""
    relation: Any = None
    if kind == "CreateStmt":
        relation = body.get("relation")
    elif kind == "CreateTableAsStmt":
        relation = body.get("into", {}).get("rel")
    elif kind == "ViewStmt":
        relation = body.get("view")
    elif kind == "CreateSeqStmt":
        relation = body.get("sequence")
    return isinstance(relation, dict) and relation.get("relpersistence") == "t"


def _functions(tree: Any, pins: set[str], clears: set[str], constants: list[bool]) -> None:
    """Advisory locks and set_config calls anywhere in a statement."""
    stack = [tree]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            call = value.get("FuncCall")
            if isinstance(call, dict):
                _call(call, pins, clears, constants)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _call(call: dict[str, Any], pins: set[str], clears: set[str], constants: list[bool]) -> None:
    parts = [part.get("String", {}).get("sval", "") for part in call.get("funcname", [])]
    name = parts[-1] if parts else ""
    if len(parts) == 2 and parts[0] != "pg_catalog":
        return  # someone's own function of that name
    if name in _SESSION_LOCKS:
        pins.add(ADVISORY_LOCK)
    elif name == "pg_advisory_unlock_all":
        clears.add(ADVISORY_LOCK)
    elif name == "set_config":
        constants[0] = True
        args = call.get("args", [])
        if not (len(args) == 3 and _constant_true(args[2])):
            # Not local to the transaction.  Even a REPLAYABLE setting pins: the call is
            # no statement the pooler could run again on its own.
            pins.add(SET)


def _constant_true(arg: Any) -> bool:
    const = arg.get("A_Const", {}) if isinstance(arg, dict) else {}
    boolean = const.get("boolval")
    if isinstance(boolean, dict):
        return bool(boolean.get("boolval"))
    cast = arg.get("TypeCast") if isinstance(arg, dict) else None
    if isinstance(cast, dict):
        return _constant_true(cast.get("arg"))
    text = _constant_text(arg)
    return text is not None and text.lower() in ("true", "t", "on", "yes", "1")


def _constant_text(arg: Any) -> Optional[str]:
    const = arg.get("A_Const", {}) if isinstance(arg, dict) else {}
    text = const.get("sval")
    if isinstance(text, dict):
        return str(text.get("sval", ""))
    return None
