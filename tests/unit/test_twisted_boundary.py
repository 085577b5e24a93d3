"""Only pgpool_tw/net/twisted_private.py may touch Twisted's private parts.

Every module under ``pgpool_tw`` is parsed with ``ast``: reading or writing an
attribute whose name starts with ``_`` (dunders aside) on anything but ``self``,
``cls`` or an imported module, or one of Twisted's undocumented attributes the
pooler once used, fails here unless the module is the adapter or the access is
in ``ALLOWED`` with its reason.  ``getattr``/``setattr``/``hasattr``/``delattr``
and ``vars(...)[...]`` with a literal name count too.
"""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

import pgpool_tw

PACKAGE = Path(pgpool_tw.__file__).parent
ADAPTER = "net/twisted_private.py"

#: Twisted attributes with public names that neither an interface nor an ivar note documents
#: (``TLS``, ``producer``, ``connected`` are documented ivars).
UNDOCUMENTED = frozenset(
    {"addressFamily", "dataBuffer", "disconnecting", "doIteration", "sessionno", "socket"}
)

#: (module under pgpool_tw/, the access as ``ast.unparse`` writes it) -> why it is not Twisted's.
ALLOWED = {
    ("lane/warm.py", "warm._missed"): "WarmLane.start: our own lane, built by its classmethod",
    ("lane/warm.py", "warm._event"): "WarmLane.start: our own lane, built by its classmethod",
    ("lane/warm.py", "warm._ports"): "WarmLane.start: our own lane, built by its classmethod",
    ("lane/warm.py", "warm._any_port"): "WarmLane.start: our own lane, built by its classmethod",
    ("net/deadlines.py", "self._queue._cancelled"): "a Deadline tells its own Deadlines",
    ("session/logs.py", "super()._client_message"): "our stream's subclass extends its step",
}

_BY_NAME = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(package: Optional[str], name: str) -> bool:
    """``from package import name`` (or ``import name``) binds a module."""
    try:
        if package is None:
            return isinstance(importlib.import_module(name), types.ModuleType)
        return isinstance(getattr(importlib.import_module(package), name, None), types.ModuleType)
    except ImportError:  # an optional dependency that is not installed
        return False


def module_aliases(tree: ast.Module, here: str) -> set[str]:
    """Names an import in ``tree`` binds to a module."""
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            package = node.module or ""
            if node.level:
                package = ".".join(here.split(".")[: -node.level] + ([package] if package else []))
            for alias in node.names:
                if _is_module(package, alias.name):
                    aliases.add(alias.asname or alias.name)
    return aliases


def _owner_is_ours(value: ast.expr, aliases: set[str]) -> bool:
    return isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in aliases)


def _is_vars(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "vars"


def _flagged_name(expr: ast.expr) -> bool:
    return (
        isinstance(expr, ast.Constant)
        and isinstance(expr.value, str)
        and (_private(expr.value) or expr.value in UNDOCUMENTED)
    )


def _vars_lookup(node: ast.AST) -> bool:
    """``vars(x)["_n"]``, ``vars(x).pop("_n")`` (any method) or ``"_n" in vars(x)``."""
    if isinstance(node, ast.Subscript):
        return _is_vars(node.value) and _flagged_name(node.slice)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _is_vars(node.func.value) and bool(node.args) and _flagged_name(node.args[0])
    if isinstance(node, ast.Compare):
        return _flagged_name(node.left) and any(_is_vars(c) for c in node.comparators)
    return False


def accesses(source: str, here: str) -> list[tuple[int, str]]:
    """(line, access) for every private or undocumented attribute use in ``source``."""
    tree = ast.parse(source)
    aliases = module_aliases(tree, here)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            flagged = _private(node.attr) or node.attr in UNDOCUMENTED
            owner = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            flagged = node.func.id in _BY_NAME and len(args) > 1 and _flagged_name(args[1])
            owner = args[0] if args else node.func
        else:
            flagged, owner = _vars_lookup(node), node
        if flagged and not _owner_is_ours(owner, aliases):
            found.append((getattr(node, "lineno", 0), ast.unparse(node)))
    return sorted(found)


def scan() -> dict[tuple[str, str], int]:
    """Every access outside the adapter, with the line it was first seen on."""
    seen: dict[tuple[str, str], int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == ADAPTER:
            continue
        dotted = "pgpool_tw." + relative[: -len(".py")].replace("/", ".")
        for line, access in accesses(path.read_text(encoding="utf-8"), dotted):
            seen.setdefault((relative, access), line)
    return seen


class BoundaryTests(SynchronousTestCase):
    def test_no_private_access_outside_the_adapter(self) -> None:
        """No module but the adapter touches a private or undocumented attribute (bar ALLOWED)."""
        offending = [
            f"pgpool_tw/{module}:{line}: {access}"
            for (module, access), line in sorted(scan().items())
            if (module, access) not in ALLOWED
        ]
        self.assertEqual(
            offending, [], "move these into pgpool_tw/net/twisted_private.py (or ALLOWED)"
        )

    def test_allow_list_has_no_stale_entries(self) -> None:
        """Each ALLOWED entry still occurs, so the list only shrinks with the code."""
        seen = scan()
        self.assertEqual([entry for entry in ALLOWED if entry not in seen], [])

    def test_finds_a_private_read_on_another_object(self) -> None:
        """A private read, write, getattr or vars() lookup on a non-self object is found."""
        source = (
            "import os\n"
            "from twisted.internet import tcp\n"
            "def f(transport, reactor):\n"
            "    n = transport._tempDataLen\n"
            "    reactor._writes = set()\n"
            "    getattr(reactor, '_poller')\n"
            "    vars(reactor).pop('doIteration', None)\n"
            "    transport.dataBuffer\n"
            "    self._mine, cls._ours, os._exit, tcp._AbortingMixin, x.__class__\n"
        )
        found = [access for _, access in accesses(source, "pgpool_tw.example")]
        self.assertEqual(
            found,
            [
                "transport._tempDataLen",
                "reactor._writes",
                "getattr(reactor, '_poller')",
                "vars(reactor).pop('doIteration', None)",
                "transport.dataBuffer",
            ],
        )
