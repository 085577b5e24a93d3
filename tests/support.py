"""Helpers for trial integration tests: one throwaway PostgreSQL per auth method per process.

trial has no session fixtures, so the clusters are lazy module-level singletons, started on
first use and stopped at interpreter exit (TempPostgres registers its own atexit stop).
Tests must not stop a shared cluster; each test makes its own roles and databases.
"""

from __future__ import annotations

import threading
import uuid

from twisted.trial.unittest import SkipTest

from pgpool_tw_dev.devdb import TempPostgres, find_pg_bindir

_lock = threading.Lock()
_clusters: dict[str, TempPostgres] = {}


def shared_postgres(auth_method: str = "trust") -> TempPostgres:
    """The process-wide running cluster for ``auth_method``, started on first use."""
    with _lock:
        pg = _clusters.get(auth_method)
        if pg is None:
            pg = TempPostgres(auth_method=auth_method).start()
            _clusters[auth_method] = pg
        return pg


def skip_unless_postgres() -> None:
    """Raise SkipTest when no PostgreSQL server binaries are installed."""
    try:
        find_pg_bindir()
    except RuntimeError as e:
        raise SkipTest(str(e)) from None


def unique_name(prefix: str) -> str:
    """A fresh lowercase identifier-safe name such as ``u_1a2b3c4d``."""
    return f"{prefix.lower()}_{uuid.uuid4().hex[:8]}"
