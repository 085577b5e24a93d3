"""pgpool_status: which nodes were down when the pooler last ran, kept in ``logdir``.

pgpool-II writes one line per node in node order (``up``, ``down`` or ``unused``) each
time a node's status changes, and reads it at start so a node detached by failover stays
detached across a restart until someone attaches it; ``-D`` (discard status) ignores the
file.  A file in which every node is down is ignored with a warning, as pgpool-II does: a
pooler that starts with no node serves nobody, and the operator meant to bring them back.

Must never: raise at start for a missing or unreadable file (a warning, then every node is
up), or leave a half-written file (write, then rename).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Optional

__all__ = ["FILE_NAME", "read_status", "status_path", "write_status"]

FILE_NAME = "pgpool_status"
_WORDS = ("up", "down", "unused")


def status_path(logdir: str) -> str:
    return os.path.join(logdir, FILE_NAME)


def read_status(path: str, indexes: Sequence[int]) -> tuple[set[int], Optional[str]]:
    """The nodes of ``indexes`` the file says are down, and a warning or None.  Line N is
    node N (pgpool-II writes ``unused`` where no node is); a missing file is no warning."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle.read().splitlines() if line.strip()]
    except FileNotFoundError:
        return set(), None
    except (OSError, UnicodeDecodeError) as e:
        return set(), f"{path}: cannot read ({e}); every node starts up"
    bad = [line for line in lines if line not in _WORDS]
    if bad:
        return set(), f"{path}: not a pgpool_status file ({bad[0]!r}); every node starts up"
    down = {index for index in indexes if index < len(lines) and lines[index] == "down"}
    if down and down >= set(indexes):
        return set(), f"{path}: every node is down in it; ignored, every node starts up"
    return down, None


def write_status(path: str, statuses: Mapping[int, str]) -> Optional[str]:
    """Write line N for node N (``up`` for pgpool-II's waiting and up, ``unused`` where no
    node is); why not, or None."""
    last = max(statuses, default=-1)
    words = [
        "unused" if index not in statuses else "down" if statuses[index] == "down" else "up"
        for index in range(last + 1)
    ]
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{word}\n" for word in words))
        os.replace(temporary, path)
    except OSError as e:
        return f"{path}: cannot write ({e.strerror or e})"
    return None
