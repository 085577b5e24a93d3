"""Where a statement may run: the read/write classifier behind load balancing (issue #16).

It owns one decision per query text: may it run on the load-balancing node (a streaming
replica), must it run on the primary, must it reach every node the session uses (session
state), or does the pooler answer it itself.  It never does I/O and never holds session
state: the session knows its transaction, its temp tables and its prepared statements, and
combines them with these verdicts.

Rules (pgpool-II 4.x's, "Load Balancing" in its docs and ``send_to_where`` /
``is_select_query`` / ``function_call_walker`` in its source):

- ROUTE_STANDBY only for statements that provably only read: SELECT / VALUES / TABLE with
  no locking clause, no INTO, no data-modifying CTE, no system catalog (pg_catalog, or an
  unqualified ``pg_*`` name: the standby's catalog can lag and its statistics views describe
  the standby), no ``pg_temp`` reference, and only read-only functions; EXPLAIN of such a
  statement, and EXPLAIN without ANALYZE of any statement but EXECUTE; SHOW;
  COPY ... TO STDOUT of a table or of such a query.
- A function is read-only (pgpool-II's three cases): when read_only_function_list is set,
  only if it matches it; else when write_function_list is set, unless it matches it; when
  both are empty, if the catalog says it is not VOLATILE (``known_read_only``, supplied by
  the caller; a function not in it is treated as volatile, as pgpool-II treats volatile
  functions: primary, and a write).  Names are matched as written (``f`` or ``schema.f``),
  case-insensitively, against patterns anchored with ``^``/``$`` as pgpool-II does.
  nextval and setval always write.
- primary_routing_query_pattern_list: anchored, case-insensitive patterns matched against
  the query text with double quotes removed (pgpool-II's ``strip_quote``); a match sends a
  read to the primary.
- A comment opening a statement stops load balancing unless allow_sql_comments is on
  (pgpool-II requires a load-balanced SELECT to start with its keyword); a leading
  ``/*NO LOAD BALANCE*/`` always does.  Comments are found by PostgreSQL's own scanner.
- ROUTE_ALL: SET / RESET, DISCARD, LOAD, transaction control (BEGIN ... ROLLBACK TO),
  PREPARE name AS ..., DEALLOCATE, LOCK weaker than ROW EXCLUSIVE.  SET
  transaction_read_only off, READ WRITE, SERIALIZABLE isolation and SET TRANSACTION
  SNAPSHOT fail on a standby: ROUTE_PRIMARY with ``desync``.  BEGIN ISOLATION LEVEL
  SERIALIZABLE and BEGIN READ WRITE: ROUTE_PRIMARY (``tx='begin'``): the transaction
  runs on the primary alone (pgpool-II sends BEGIN to both and lets the standby fail).
- Everything else goes to the primary; it is a write unless it only signals or reads
  (LISTEN/UNLISTEN/NOTIFY, cursors, COPY to a server file, SET CONSTRAINTS, PREPARE
  TRANSACTION).  Text that fails to parse: primary, write.
- Several statements in one text: ROUTE_STANDBY if all are, ROUTE_ALL if all are;
  otherwise the primary, a write if one writes, ``desync`` if one changed session state
  (not transaction control: the session follows that by ReadyForQuery and ``tx``).

Cost, measured with timeit (CPython 3.11, pglast 8.8, a shared 2-core machine) for pgbench -S's
``SELECT abalance FROM pgbench_accounts WHERE aid = 12345;``: a cache hit 0.06 us; a new text
of a known shape 2.2 us (pglast's normalize 1.7 us, then the shape's verdict; a stream of
200,000 distinct aids through a full cache, evictions included, 2.3 us); the first text of a
shape 15 us (pglast's JSON parse tree 2.3 us, json.loads 4.7 us, the walk and the verdict the
rest).  Rejected: pglast's Python node objects (37 us for the parse alone), and caching by
pglast's fingerprint (2.6 us, no cheaper than normalize, and it drops what the rules read:
schema names, relation names behind an alias, digit runs in names: ``FROM t x`` and
``FROM my_temp x`` share a fingerprint).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

from pgpool_tw.cluster.pgpool_sql import LOCAL_COMMANDS, SHOW, LocalCommand, local_command

try:
    from pglast import parser as _pg
except ImportError:  # PyPy, where pglast does not build: every statement to the primary
    _pg = None  # type: ignore[assignment]

#: PostgreSQL's parser is here; without it nothing is load balanced (cluster.settings_report
#: says so once).
AVAILABLE = _pg is not None

__all__ = [
    "AVAILABLE",
    "LOCAL_COMMANDS",
    "ROUTE_ALL",
    "ROUTE_LOCAL",
    "ROUTE_PRIMARY",
    "ROUTE_STANDBY",
    "Classifier",
    "Verdict",
    "parse_statements",
]

ROUTE_STANDBY, ROUTE_PRIMARY, ROUTE_ALL, ROUTE_LOCAL = 0, 1, 2, 3

#: Longer texts are classified but not cached: the cache must not hold bulk INSERTs.
CACHE_TEXT_LIMIT = 8192


@dataclass(frozen=True)
class Verdict:
    """Where one query text may run, and what it changes that the session must remember.

    What only the session can add: a ROUTE_STANDBY read naming one of its temp tables in
    ``relations`` goes to the primary; EXECUTE (ROUTE_PRIMARY, a write, ``execute_name``)
    takes the ``inner`` verdict of its PREPARE when the session knows it; a PREPARE whose
    ``relations`` name a temp table goes to the primary only, and desyncs; ``tx`` with
    ReadyForQuery tells it where a transaction lives (``BEGIN; SELECT 1`` opens one on the
    primary only); after ``prepare_transaction`` the standby's transaction must be ended.
    """

    route: int
    write: bool = False
    tx: str = ""
    desync: bool = False
    temp_created: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    #: A command the pooler answers itself (cluster/pgpool_sql.py), for ROUTE_LOCAL.
    local: Optional[LocalCommand] = None
    prepare_name: str = ""
    execute_name: str = ""
    deallocate_name: str = ""
    inner: Optional[Verdict] = None
    #: The table an INSERT/UPDATE/DELETE/MERGE writes (disable_load_balance_on_write =
    #: dml_adaptive keeps the transaction's reads of it on the primary).
    writes_to: tuple[str, ...] = ()
    #: Every statement of the text is a SELECT or DML, whose rules read no constant: the
    #: verdict holds for any text that differs only in its literals (the C loop's shape
    #: key, engine/_shape.c, may stand for the text).
    shaped: bool = field(default=False, compare=False)


_EMPTY = Verdict(ROUTE_PRIMARY)
_PRIMARY = _EMPTY
_WRITE = Verdict(ROUTE_PRIMARY, write=True)
_ALL = Verdict(ROUTE_ALL)
_DESYNC = Verdict(ROUTE_PRIMARY, desync=True)
_STANDBY = Verdict(ROUTE_STANDBY)

#: BEGIN READ WRITE / ISOLATION LEVEL SERIALIZABLE: the standby would refuse it, so the
#: transaction runs on the primary alone.
_BEGIN_ON_PRIMARY = Verdict(ROUTE_PRIMARY, tx="begin")

_TRANSACTIONS = {
    "TRANS_STMT_BEGIN": Verdict(ROUTE_ALL, tx="begin"),
    "TRANS_STMT_START": Verdict(ROUTE_ALL, tx="begin"),
    "TRANS_STMT_COMMIT": Verdict(ROUTE_ALL, tx="commit"),
    "TRANS_STMT_ROLLBACK": Verdict(ROUTE_ALL, tx="rollback"),
    "TRANS_STMT_SAVEPOINT": Verdict(ROUTE_ALL, tx="savepoint"),
    "TRANS_STMT_RELEASE": Verdict(ROUTE_ALL, tx="release"),
    "TRANS_STMT_ROLLBACK_TO": Verdict(ROUTE_ALL, tx="rollback_to"),
    # Two-phase commit lives on the primary (pgpool-II: is_2pc_transaction_query).
    "TRANS_STMT_PREPARE": Verdict(ROUTE_PRIMARY, tx="prepare_transaction"),
}

_DML = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
#: Statements whose verdict no constant in them changes: texts of one shape (pglast's
#: normalize) share it.  A write is a write whatever it writes.
_SHAPED = frozenset({"SelectStmt"}) | _DML
# Statements that must run on the primary but change no data.
_PRIMARY_READS = frozenset(
    {
        "ListenStmt",
        "UnlistenStmt",
        "NotifyStmt",
        "FetchStmt",
        "ClosePortalStmt",
        "ConstraintsSetStmt",
    }
)
_SESSION = frozenset({"DiscardStmt", "LoadStmt"})
# Where a CREATE names the relation it creates.
_CREATED = {
    "CreateStmt": ("relation",),
    "ViewStmt": ("view",),
    "CreateSeqStmt": ("sequence",),
    "CreateTableAsStmt": ("into", "rel"),
}
_ALWAYS_WRITE = frozenset({"nextval", "setval"})
# PostgreSQL's parse_bool spellings of false.
_FALSE = frozenset({"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"})
_ROW_EXCLUSIVE = 3  # storage/lockdefs.h: weaker locks are taken on every node
_LOCK, _MODIFY = 1, 2
_COMMENTS = ("C_COMMENT", "SQL_COMMENT")
_NODES = frozenset({"FuncCall", "RangeVar", "relation"}) | _DML


def parse_statements(text: str) -> list[dict[str, Any]]:
    """PostgreSQL's parse tree of ``text``, one dict per statement (``stmt``,
    ``stmt_location``, ``stmt_len``), as pglast's JSON gives it (the cheapest form: see the
    cost above).  Raises when the text does not parse or pglast is not installed."""
    if _pg is None:
        raise RuntimeError("pglast is not installed")
    statements: list[dict[str, Any]] = json.loads(_pg.parse_sql_json(text))["stmts"]
    return statements


def normalize(text: str) -> Optional[str]:
    """The text's shape: pglast's normalize (constants as $n; names and comments kept), or
    None when pglast is missing or cannot read it."""
    if _pg is None:
        return None
    try:
        shape: str = _pg.normalize(text)
    except Exception:  # pglast's ParseError: no shape, the caller parses (and fails) itself
        return None
    return shape


def _compile(pattern: Union[str, re.Pattern[str]], setting: str) -> re.Pattern[str]:
    """A pgpool-II list pattern: ^ and $ added unless present, case-insensitive."""
    if not isinstance(pattern, str):
        return pattern
    anchored = pattern if pattern.startswith("^") else "^" + pattern
    if not pattern.endswith("$"):
        anchored += "$"
    try:
        return re.compile(anchored, re.IGNORECASE | re.DOTALL)
    except re.error as error:
        raise ValueError(f"{setting}: invalid regular expression {pattern!r}: {error}") from None


def _walk(tree: Any) -> tuple[list[str], list[str], int]:
    """The functions called, the relations named, and _LOCK/_MODIFY seen in a tree.

    SELECT INTO is legal only at the top, where the caller looks for it.
    """
    functions: list[str] = []
    relations: list[str] = []
    flags = 0
    stack = [tree] if type(tree) is dict else [{"": tree}]
    pop, push = stack.pop, stack.append
    while stack:
        # Only dict values can be nodes of interest; most values are scalars.
        for key, value in pop().items():
            kind = type(value)
            if kind is dict:
                if key in _NODES:
                    if key == "FuncCall":
                        parts = value["funcname"]
                        functions.append(".".join([part["String"]["sval"] for part in parts]))
                    elif key == "RangeVar" or key == "relation":
                        schema = value.get("schemaname")
                        table = value.get("relname", "")
                        relations.append(f"{schema}.{table}" if schema else table)
                    else:
                        flags |= _MODIFY
                push(value)
            elif kind is list:
                if key == "lockingClause":
                    flags |= _LOCK
                for item in value:
                    if type(item) is dict:
                        push(item)
                    elif type(item) is list:
                        push({"": item})
    return functions, relations, flags


_VALUE_KEYS = {"String": "sval", "Integer": "ival", "Boolean": "boolval"}
_DEFAULTS = {"sval": "", "ival": 0, "boolval": False}


def _constant(node: Any) -> Any:
    """The value of a constant node (A_Const, String, Integer, Boolean), or None.

    The JSON tree omits zero values: ``{"Integer": {}}`` and ``{"ival": {}}`` are 0.
    """
    if not isinstance(node, dict) or len(node) != 1:
        return None
    kind, value = next(iter(node.items()))
    if not isinstance(value, dict):
        return None
    if kind == "A_Const":  # {"A_Const": {"ival": {"ival": 1}}}
        for key, default in _DEFAULTS.items():
            inner = value.get(key)
            if isinstance(inner, dict):
                return inner.get(key, default)
        return None
    name = _VALUE_KEYS.get(kind)  # {"Integer": {"ival": 1}}
    return None if name is None else value.get(name, _DEFAULTS[name])


def _is_false(node: Any) -> bool:
    """True for a parse-tree constant that PostgreSQL reads as boolean false."""
    value = _constant(node)
    if isinstance(value, str):
        return value.lower() in _FALSE
    return value is not None and not value


def _text(node: Any) -> str:
    """The lower-case string of a constant (``'serializable'``), or ''."""
    value = _constant(node)
    return value.lower() if isinstance(value, str) else ""


def _special(name: str) -> bool:
    """A relation only the primary can answer for: pg_temp, or a system catalog."""
    schema, _, table = name.rpartition(".")
    if schema:
        return schema == "pg_catalog" or schema.startswith("pg_temp")
    return table.startswith("pg_")


class Classifier:
    """Verdicts for query texts under one set of pgpool-II load-balancing settings."""

    def __init__(
        self,
        *,
        write_functions: tuple[Union[str, re.Pattern[str]], ...] = (),
        read_only_functions: tuple[Union[str, re.Pattern[str]], ...] = (),
        primary_patterns: tuple[Union[str, re.Pattern[str]], ...] = (),
        allow_sql_comments: bool = False,
        known_read_only: frozenset[str] = frozenset(),
        cache_size: int = 10000,
    ) -> None:
        self._write = [_compile(p, "write_function_list") for p in write_functions]
        self._read_only = [_compile(p, "read_only_function_list") for p in read_only_functions]
        self._patterns = [
            _compile(p, "primary_routing_query_pattern_list") for p in primary_patterns
        ]
        self._allow_comments = allow_sql_comments
        self._known = frozenset(name.lower() for name in known_read_only)
        self._size = max(2, cache_size)
        self._cache: dict[str, Verdict] = {}
        self._functions: dict[str, bool] = {}
        self._shapes: dict[str, Verdict] = {}

    def set_known_read_only(self, names: frozenset[str]) -> None:
        """Take the catalog's non-VOLATILE function names (``f`` for every ``f``, or ``s.f``)."""
        self._known = frozenset(name.lower() for name in names)
        self._cache.clear()
        self._shapes.clear()
        self._functions.clear()

    def classify(self, text: str) -> Verdict:
        """The verdict for one query text (simple Query or Parse); never raises."""
        verdict = self._cache.get(text)
        if verdict is not None:
            return verdict
        try:
            verdict = self._classify(text)
        except Exception:  # PostgreSQL decides (the primary reports the error), or ours
            command = local_command(text)
            verdict = _WRITE if command is None else Verdict(ROUTE_LOCAL, local=command)
        if len(text) <= CACHE_TEXT_LIMIT:
            cache = self._cache
            if len(cache) >= self._size:
                # Keep the newer half: dicts keep insertion order.
                keep = list(cache.items())[len(cache) // 2 :]
                cache.clear()
                cache.update(keep)
            cache[text] = verdict
        return verdict

    def _classify(self, text: str) -> Verdict:
        if _pg is None:
            return _WRITE
        # pglast's normalize replaces constants with $n and keeps names and comments; no
        # rule here reads a constant inside a SELECT or a DML statement, so texts of one
        # such shape share a verdict.
        shape = _pg.normalize(text)
        verdict = self._shapes.get(shape)
        if verdict is None:
            statements = parse_statements(text)
            if not statements:
                return _EMPTY
            nodes = [next(iter(s["stmt"].items())) for s in statements]
            verdicts = [self._statement(kind, body) for kind, body in nodes]
            verdict = verdicts[0] if len(verdicts) == 1 else _combine(verdicts)
            # Constants matter elsewhere: SET transaction_read_only = off, EXPLAIN (ANALYZE 0).
            if all(kind in _SHAPED for kind, _ in nodes):
                verdict = replace(verdict, shaped=True)
            if verdict.shaped and len(shape) <= CACHE_TEXT_LIMIT:
                if len(self._shapes) >= self._size:
                    self._shapes.clear()
                self._shapes[shape] = verdict
        # The text rules read the text itself: its comments and the user's patterns.
        if verdict.route == ROUTE_STANDBY and self._held_back(text):
            return replace(verdict, route=ROUTE_PRIMARY)
        return verdict

    def _held_back(self, text: str) -> bool:
        """Whether the text's comments or primary_routing_query_pattern_list keep a read
        on the primary."""
        if "--" in text or "/*" in text:
            start = True
            for token in _pg.scan(text):
                if token.name in _COMMENTS:
                    if start:
                        comment = text[token.start : token.end + 1]
                        if not self._allow_comments:
                            return True
                        if comment[2:-2].strip().upper() == "NO LOAD BALANCE":
                            return True
                else:
                    start = token.name == "ASCII_59"  # ';' starts the next statement
        if self._patterns:
            stripped = text.replace('"', "")
            return any(p.search(stripped) for p in self._patterns)
        return False

    def _statement(self, kind: str, body: Any) -> Verdict:
        if kind == "SelectStmt":
            into = body.get("intoClause")
            if into is not None:
                return _created(into["rel"])
            return self._read(body)
        if kind in _DML:
            target = body.get("relation")
            if not target:
                return _WRITE
            schema = target.get("schemaname")
            table = target.get("relname", "")
            return Verdict(
                ROUTE_PRIMARY, write=True, writes_to=(f"{schema}.{table}" if schema else table,)
            )
        if kind == "VariableShowStmt":
            name = body.get("name", "")
            if name in LOCAL_COMMANDS:
                return Verdict(ROUTE_LOCAL, local=LocalCommand(SHOW, name))
            return _STANDBY
        if kind == "TransactionStmt":
            verdict = _TRANSACTIONS.get(body.get("kind", ""), _WRITE)
            if verdict.tx == "begin" and _standby_refuses(body.get("options", ())):
                return _BEGIN_ON_PRIMARY
            return verdict
        if kind == "VariableSetStmt":
            return _set(body)
        if kind in _SESSION:
            return _ALL
        if kind == "ExplainStmt":
            inner = self._statement(*next(iter(body["query"].items())))
            analyze = any(
                "DefElem" in o
                and o["DefElem"].get("defname") == "analyze"
                and not _is_false(o["DefElem"].get("arg"))
                for o in body.get("options", ())
            )
            if inner.route == ROUTE_STANDBY or analyze:
                return inner
            if "ExecuteStmt" in body["query"]:
                return _PRIMARY  # the statement may exist on the primary only
            # Without ANALYZE nothing runs: a standby plans even a DELETE (pgpool-II sends
            # EXPLAIN there), provided it knows every relation.
            names = tuple(sorted(set(_walk(body["query"])[1])))
            special = any(_special(name) for name in names)
            return Verdict(ROUTE_PRIMARY if special else ROUTE_STANDBY, relations=names)
        if kind == "CopyStmt":
            if body.get("is_from"):
                return _WRITE
            if body.get("filename") or body.get("is_program"):
                return _PRIMARY
            query = body.get("query")
            if query is None:
                return self._read({"RangeVar": body["relation"]})
            inner = self._statement(*next(iter(query.items())))
            return inner if inner.route in (ROUTE_STANDBY, ROUTE_PRIMARY) else _PRIMARY
        if kind == "PrepareStmt":
            name = body.get("name", "")
            inner = self._statement(*next(iter(body["query"].items())))
            relations = tuple(sorted(set(_walk(body["query"])[1])))
            if any(r.startswith("pg_temp") for r in relations):
                return Verdict(ROUTE_PRIMARY, desync=True, prepare_name=name, inner=inner)
            return Verdict(ROUTE_ALL, relations=relations, prepare_name=name, inner=inner)
        if kind == "ExecuteStmt":
            return Verdict(ROUTE_PRIMARY, write=True, execute_name=body.get("name", ""))
        if kind == "DeallocateStmt":
            return Verdict(ROUTE_ALL, deallocate_name=body.get("name") or "*")
        if kind in _PRIMARY_READS:
            return _PRIMARY
        if kind == "DeclareCursorStmt":
            inner = self._statement(*next(iter(body["query"].items())))
            return _WRITE if inner.write else _PRIMARY
        if kind == "LockStmt":
            return _ALL if body.get("mode", 8) < _ROW_EXCLUSIVE else _WRITE
        path = _CREATED.get(kind)
        if path is not None:
            relation = body
            for key in path:
                relation = relation[key]
            return _created(relation)
        return _WRITE

    def _read(self, tree: Any) -> Verdict:
        """A SELECT-like tree: the standby if it provably only reads."""
        functions, relations, flags = _walk(tree)
        if flags:
            return _WRITE
        names = tuple(sorted(set(relations)))
        for function in functions:
            if self._writes(function):
                return Verdict(ROUTE_PRIMARY, write=True, relations=names)
        if any(_special(name) for name in names):
            return Verdict(ROUTE_PRIMARY, relations=names)
        return Verdict(ROUTE_STANDBY, relations=names)

    def _writes(self, name: str) -> bool:
        """Whether calling the function may write (is not provably read-only)."""
        known = self._functions.get(name)
        if known is not None:
            return known
        lower = name.lower()
        last = lower.rpartition(".")[2]
        if last in _ALWAYS_WRITE:
            writes = True
        elif self._read_only:
            writes = not any(p.search(name) for p in self._read_only)
        elif self._write:
            writes = any(p.search(name) for p in self._write)
        else:
            writes = lower not in self._known and last not in self._known
        if len(self._functions) >= self._size:
            self._functions.clear()
        self._functions[name] = writes
        return writes


def _created(relation: Any) -> Verdict:
    """A statement creating a relation: a write, and the name if the relation is temporary."""
    schema = relation.get("schemaname", "")
    if relation.get("relpersistence") == "t" or schema.startswith("pg_temp"):
        return Verdict(ROUTE_PRIMARY, write=True, temp_created=(relation["relname"],))
    return _WRITE


def _set(body: Any) -> Verdict:
    """SET: every node, except the settings a standby refuses (pgpool-II: primary only)."""
    kind, name = body.get("kind"), body.get("name", "")
    args = body.get("args", ())
    if kind == "VAR_SET_VALUE":
        if name == "transaction_read_only" and any(_is_false(a) for a in args):
            return _DESYNC
        if name in ("transaction_isolation", "default_transaction_isolation") and any(
            _text(a) == "serializable" for a in args
        ):
            return _DESYNC
    elif kind == "VAR_SET_MULTI" and (name == "TRANSACTION SNAPSHOT" or _standby_refuses(args)):
        return _DESYNC
    return _ALL


def _standby_refuses(options: Any) -> bool:
    """Transaction modes a hot standby refuses: READ WRITE, SERIALIZABLE."""
    for arg in options:
        option = arg.get("DefElem", {})
        value = option.get("arg")
        if option.get("defname") == "transaction_read_only" and _is_false(value):
            return True
        if option.get("defname") == "transaction_isolation" and _text(value) == "serializable":
            return True
    return False


def _combine(verdicts: list[Verdict]) -> Verdict:
    """One verdict for a text of several statements."""
    routes = {v.route for v in verdicts}
    relations = tuple(sorted({r for v in verdicts for r in v.relations}))
    temp = tuple(dict.fromkeys(t for v in verdicts for t in v.temp_created))
    tx = prepare = execute = deallocate = ""
    inner = None
    for v in verdicts:
        tx = v.tx or tx
        if v.prepare_name:
            prepare, inner = v.prepare_name, v.inner
        execute = v.execute_name or execute
        deallocate = v.deallocate_name or deallocate
    if routes == {ROUTE_STANDBY}:
        return Verdict(ROUTE_STANDBY, relations=relations)
    # A write whose table is not known leaves writes_to empty: the session then assumes
    # the transaction may have written anything.
    writes = [v for v in verdicts if v.write]
    writes_to: tuple[str, ...] = ()
    if writes and all(v.writes_to for v in writes):
        writes_to = tuple(dict.fromkeys(w for v in writes for w in v.writes_to))
    if routes == {ROUTE_ALL}:
        route, desync = ROUTE_ALL, False
    else:
        route = ROUTE_PRIMARY
        desync = any(v.desync or (v.route == ROUTE_ALL and not v.tx) for v in verdicts)
    return Verdict(
        route,
        write=any(v.write for v in verdicts),
        tx=tx,
        desync=desync,
        temp_created=temp,
        relations=relations,
        prepare_name=prepare,
        execute_name=execute,
        deallocate_name=deallocate,
        inner=inner,
        writes_to=writes_to,
    )
