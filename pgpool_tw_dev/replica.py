"""A real streaming replica of a running :class:`~pgpool_tw_dev.devdb.TempPostgres`.

Owns: making a hot standby the way an operator does (``pg_basebackup -R`` from the running
primary into a new private data dir, then starting it on a free loopback port), and waiting
until a standby has replayed what its primary has written.  The standby is a TempPostgres
whose "initdb" step is the base backup, so ports, socket dirs, running as the ``postgres``
user when we are root, and stopping by pid are devdb's, not a second copy.

Must never: import Twisted, connect anywhere but the primary's private unix socket, or signal
any process but the postmaster it started itself.
"""

from __future__ import annotations

import time
from typing import Optional

from pgpool_tw.protocol.rows import lsn_from_text
from pgpool_tw_dev.devdb import TempPostgres

__all__ = ["Replica", "lsn_to_int", "start_replica", "wait_replayed"]


#: PostgreSQL's ``X/Y`` LSN text as one byte position (``0/3000148`` -> 0x3000148).
lsn_to_int = lsn_from_text


class Replica(TempPostgres):
    """A hot standby streaming from ``primary``: a base backup instead of initdb.

    ``application_name`` becomes the standby's ``cluster_name``, which its WAL receiver
    reports as ``application_name`` in the primary's ``pg_stat_replication`` (the name
    pgpool-II's ``backend_application_nameN`` matches).
    """

    def __init__(
        self,
        primary: TempPostgres,
        application_name: str = "replica",
        settings: Optional[dict[str, str]] = None,
        base_dir: Optional[str] = None,
    ) -> None:
        if primary.pid is None:
            raise ValueError("the primary must be running to take a base backup from it")
        merged = {"cluster_name": application_name, "hot_standby": "on"}
        merged.update(settings or {})
        super().__init__(auth_method=primary.auth_method, settings=merged, base_dir=base_dir)
        self.primary = primary
        self.application_name = application_name

    def _initdb(self) -> None:
        """The replica's data dir is a base backup of the primary, with standby.signal and
        primary_conninfo written by ``-R`` (over the primary's unix socket, which devdb's
        pg_hba.conf trusts for replication)."""
        argv = [self._bin("pg_basebackup"), "-D", self.data_dir, "-R", "-X", "stream"]
        argv += ["-c", "fast", "--no-sync", "-h", self.primary.socket_dir]
        argv += ["-p", str(self.primary.port), "-U", self.primary.superuser]
        proc = self._run_as_server(argv, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"pg_basebackup failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        # The backup copied the primary's server log and its pgpool_tw.conf (port, socket
        # dir); _start_server rewrites the conf for this server and starts a fresh log.


def start_replica(
    primary: TempPostgres,
    application_name: str = "replica",
    settings: Optional[dict[str, str]] = None,
    base_dir: Optional[str] = None,
) -> TempPostgres:
    """A running hot standby of the running ``primary``, streaming; stop it with ``stop()``.

    Returns once the primary's ``pg_stat_replication`` shows it ``streaming``, so a caller
    never sees a standby whose WAL receiver has not connected yet.
    """
    replica = Replica(primary, application_name, settings, base_dir).start()
    try:
        _wait_streaming(primary, application_name, timeout=60.0)
    except BaseException:
        replica.stop()
        raise
    return replica


def _wait_streaming(primary: TempPostgres, application_name: str, timeout: float) -> None:
    sql = (
        "SELECT count(*) FROM pg_stat_replication "
        "WHERE application_name = :'name' AND state = 'streaming';\n"
    )
    deadline = time.monotonic() + timeout
    while primary.psql(sql, variables={"name": application_name}).strip() == "0":
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"standby {application_name!r} is not streaming from port {primary.port} "
                f"after {timeout:g}s"
            )
        time.sleep(0.05)


def wait_replayed(primary: TempPostgres, replica: TempPostgres, timeout: float = 60.0) -> int:
    """Block until ``replica`` has replayed ``primary``'s current WAL position; return it.

    Raises TimeoutError after ``timeout`` seconds (a paused or broken standby), so a test
    that forgets to resume replay fails instead of hanging.
    """
    # The primary commits asynchronously (devdb's settings), and a record written after
    # the last commit (bgwriter's running-transactions record) may wait in its WAL
    # buffers until a page fills, unsent.  A transaction that writes WAL and commits
    # synchronously flushes all of it; its flush position is a target the standby reaches
    # at once.  (A transaction that only took an xid would not flush.)
    target = lsn_to_int(
        primary.psql(
            "SET synchronous_commit = on; "
            "SELECT pg_logical_emit_message(true, 'pgpool-tw', 'caught up?'); "
            "SELECT pg_current_wal_flush_lsn();"
        ).split()[-1]
    )
    deadline = time.monotonic() + timeout
    while True:
        replayed = replica.psql("SELECT pg_last_wal_replay_lsn();").strip()
        if replayed and lsn_to_int(replayed) >= target:
            return target
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"replica on port {replica.port} replayed {replayed or 'nothing'}, "
                f"not yet the primary's {target:X} after {timeout:g}s"
            )
        time.sleep(0.05)
