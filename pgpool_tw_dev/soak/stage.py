"""The soak's stage: a throwaway PostgreSQL that asks for passwords, its role, database
and tables, and a real ``twistd pgpool`` in front of it, with what /proc says of the
pooler's process.

The server commits synchronously (``synchronous_commit = on``) so that an acknowledged
commit is in the WAL the kernel holds before the client hears of it: kill -9 of every
server process then loses none (``fsync`` stays off as in devdb: the machine does not
crash, only PostgreSQL's processes die).  Logins ask for a SCRAM password, so a flood
that sends a startup packet and never the password holds a pass-through login open, as
in issue #20's item 1.

Must never: signal a process but the pooler it started (by its Popen) and the server
(devdb does, by pid); listen on anything but loopback.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import tempfile
from typing import Optional

from pgpool_tw_dev.devdb import TempPostgres, client_env, free_port, pg_bin, quote_conf
from pgpool_tw_dev.faultload import LogWatch, _stop_child, read_text, start_twistd

USER = "soak"
PASSWORD = "soak-pw"
DATABASE = "soak"
#: pgbench's ids start here, far above the psycopg clients' own counter.
BENCH_IDS_START = 10**12
POOLER_STOP_TIMEOUT = 15.0
_SOCKET_DIR_MAX = 80  # sun_path is 108 bytes

SCHEMA = f"""
CREATE TABLE soak_history (
    id bigint PRIMARY KEY,
    kind text NOT NULL,
    run int,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE soak_bench_ids START {BENCH_IDS_START};
ALTER TABLE soak_history OWNER TO {USER};
ALTER SEQUENCE soak_bench_ids OWNER TO {USER};
"""


@dataclasses.dataclass(frozen=True)
class Usage:
    """The pooler process's open fds and resident memory at one moment; ``targets``
    names what each fd is (a file, or a socket's TCP addresses and state)."""

    fds: int
    rss_kb: int
    targets: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.fds} fds, VmRSS {self.rss_kb} kB"


_TCP_STATES = {
    "01": "ESTABLISHED",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "0A": "LISTEN",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "09": "LAST_ACK",
}


def _ipv4(text: str) -> str:
    host, port = text.split(":")
    quad = ".".join(str(b) for b in reversed(bytes.fromhex(host)))
    return f"{quad}:{int(port, 16)}"


def _sockets(pid: int) -> dict[str, str]:
    """socket inode -> "tcp LOCAL -> REMOTE STATE" from /proc/PID/net/tcp (IPv4 only:
    the soak's sockets are all on 127.0.0.1); unix sockets as "unix PATH"."""
    found: dict[str, str] = {}
    for line in read_text(f"/proc/{pid}/net/tcp").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9:
            state = _TCP_STATES.get(fields[3], fields[3])
            found[fields[9]] = f"tcp {_ipv4(fields[1])} -> {_ipv4(fields[2])} {state}"
    for line in read_text(f"/proc/{pid}/net/unix").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 6:
            found[fields[6]] = "unix " + (fields[7] if len(fields) > 7 else "(unnamed)")
    return found


def work_dir() -> str:
    """A private temp dir, short enough for unix socket paths, traversable by the server
    user when we are root."""
    path = tempfile.mkdtemp(prefix="pgtw-soak-")
    if len(path) > _SOCKET_DIR_MAX:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="pgtw-soak-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


def start_server() -> TempPostgres:
    """The primary, with the soak's role, database and table (made over the unix socket,
    not through the pooler)."""
    pg = TempPostgres(
        auth_method="scram-sha-256",
        settings={"synchronous_commit": "on", "max_connections": "200"},
    ).start()
    try:
        pg.create_role(USER, PASSWORD)
        pg.create_database(DATABASE, owner=USER)
        pg.psql(SCHEMA, dbname=DATABASE)
    except BaseException:
        pg.stop()
        raise
    return pg


class SoakPooler:
    """``twistd -n pgpool`` in front of ``pg`` with few session slots and a short
    authentication_timeout, so that a flood of logins that never finish matters."""

    def __init__(
        self,
        directory: str,
        pg: TempPostgres,
        children: int,
        auth_timeout: int,
        life_time: int = 5,
    ) -> None:
        self.dir = directory
        self.port = free_port()
        self.auth_timeout = auth_timeout
        self.conf_path = os.path.join(directory, "pgpool.conf")
        self.log_path = os.path.join(directory, "pgpool.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.watch = LogWatch(self.log_path)
        lines = [
            "# written by pgpool_tw_dev/soak/stage.py",
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"socket_dir = {quote_conf(directory)}",
            f"logdir = {quote_conf(directory)}",
            f"backend_hostname0 = {quote_conf(pg.host)}",
            f"backend_port0 = {pg.port}",
            f"num_init_children = {children}",
            "max_pool = 2",
            f"authentication_timeout = {auth_timeout}",
            # Idle pooled server connections close soon after their client left, so the
            # fd count after the settle is the pooler's own, not the pool's contents.
            f"connection_life_time = {life_time}",
            "connect_timeout = 10000",
            "sr_check_period = 0",
            "health_check_period = 0",
        ]
        with open(self.conf_path, "w", encoding="utf-8") as conf:
            conf.write("\n".join(lines) + "\n")

    def start(self) -> SoakPooler:
        self.proc = start_twistd(self.conf_path, self.dir, self.log_path)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def usage(self) -> Usage:
        """/proc's count of the pooler's open fds and its VmRSS."""
        pid = self.pid
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue  # closed meanwhile
        sockets = _sockets(pid)
        named = []
        for target in targets:
            if target.startswith("socket:["):
                target = sockets.get(target[8:-1], target)
            named.append(target)
        rss = 0
        for line in read_text(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return Usage(len(targets), rss, tuple(sorted(named)))

    def stop(self) -> None:
        """A fast shutdown (SIGINT), SIGKILL if it hangs."""
        if self.proc is not None:
            _stop_child(self.proc, signal.SIGINT, POOLER_STOP_TIMEOUT)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(read_text(self.log_path).splitlines()[-lines:])

    def dsn(self, application_name: str, connect_timeout: int = 5) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={USER} dbname={DATABASE} "
            f"password={PASSWORD} connect_timeout={connect_timeout} "
            f"application_name={application_name}"
        )

    def client_env(self, application_name: str) -> dict[str, str]:
        """libpq's environment for psql and pgbench through the pooler."""
        return client_env(
            PGPASSWORD=PASSWORD,
            PGAPPNAME=application_name,
            PGCONNECT_TIMEOUT="3",
        )

    def psql_argv(self, sql: str) -> list[str]:
        return [
            pg_bin("psql"),
            *("-X", "-At", "-h", "127.0.0.1", "-p", str(self.port)),
            *("-U", USER, "-d", DATABASE, "-c", sql),
        ]
