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
from pgpool_tw_dev.replica import start_replica, wait_replayed

_lock = threading.Lock()
_clusters: dict[str, TempPostgres] = {}
_pair: list[TempPostgres] = []

#: The shared replica's application_name (its walreceiver's name in pg_stat_replication).
REPLICA_NAME = "replica1"


def shared_postgres(auth_method: str = "trust") -> TempPostgres:
    """The process-wide running cluster for ``auth_method``, started on first use."""
    with _lock:
        pg = _clusters.get(auth_method)
        if pg is None:
            pg = TempPostgres(auth_method=auth_method).start()
            _clusters[auth_method] = pg
        return pg


def shared_cluster() -> tuple[TempPostgres, TempPostgres]:
    """The process-wide (primary, streaming replica) pair, started on first use.

    Its own primary (trust auth), not ``shared_postgres``'s, so tests that pause the replica
    or write to the primary never disturb the plain tests.  Stopped at exit, replica first
    (atexit runs last-registered first).  A test that pauses replay must resume it.
    """
    with _lock:
        if not _pair:
            primary = TempPostgres().start()
            try:
                replica = start_replica(primary, application_name=REPLICA_NAME)
            except BaseException:
                primary.stop()
                raise
            _pair.extend((primary, replica))
        return _pair[0], _pair[1]


def wait_replica_caught_up(timeout: float = 60.0) -> int:
    """Block until the shared replica has replayed the shared primary's current LSN."""
    primary, replica = shared_cluster()
    return wait_replayed(primary, replica, timeout)


def skip_unless_postgres() -> None:
    """Raise SkipTest when no PostgreSQL server binaries are installed."""
    try:
        find_pg_bindir()
    except RuntimeError as e:
        raise SkipTest(str(e)) from None


def unique_name(prefix: str) -> str:
    """A fresh lowercase identifier-safe name such as ``u_1a2b3c4d``."""
    return f"{prefix.lower()}_{uuid.uuid4().hex[:8]}"
