"""The rooms of pgpool_tw/ import each other one way only (docs/ARCHITECTURE.md, §1).

Every ``from pgpool_tw.X … import`` between two rooms (a sub-package, or a
top-level module) is an arrow, type-only imports included; the arrows must
form no cycle, so each room can be read, tested and changed knowing only the
rooms below it.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict

from twisted.trial.unittest import SynchronousTestCase

import pgpool_tw

PACKAGE = os.path.dirname(pgpool_tw.__file__)


def _room(module: str, packages: set[str]) -> str:
    """``pgpool_tw.session.machine`` -> ``session``; ``pgpool_tw.service`` -> ``service``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def arrows() -> dict[str, set[str]]:
    packages = {
        name for name in os.listdir(PACKAGE) if os.path.isdir(os.path.join(PACKAGE, name, ""))
    }
    graph: dict[str, set[str]] = defaultdict(set)
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")]
            source = _room(relative.replace(os.sep, "."), packages)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or not node.module:
                    continue
                if not node.module.startswith("pgpool_tw"):
                    continue
                targets = (
                    [f"pgpool_tw.{alias.name}" for alias in node.names]
                    if node.module == "pgpool_tw"
                    else [node.module]
                )
                for target in targets:
                    room = _room(target, packages)
                    if room and source and room != source:
                        graph[source].add(room)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a list of rooms, or [] when there is none."""
    done: set[str] = set()

    def visit(room: str, path: list[str]) -> list[str]:
        if room in path:
            return path[path.index(room) :] + [room]
        if room in done:
            return []
        for target in sorted(graph.get(room, ())):
            found = visit(target, path + [room])
            if found:
                return found
        done.add(room)
        return []

    for room in sorted(graph):
        found = visit(room, [])
        if found:
            return found
    return []


class RoomTests(SynchronousTestCase):
    def test_rooms_import_one_way(self) -> None:
        """No room imports a room that imports it back, directly or around a loop."""
        self.assertEqual(cycle(arrows()), [])

    def test_a_cycle_is_found(self) -> None:
        """The check itself finds a loop of three rooms."""
        self.assertEqual(cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])

    def test_protocol_imports_no_room(self) -> None:
        """The wire-format room stands on nothing of ours."""
        self.assertEqual(arrows().get("protocol", set()), set())
