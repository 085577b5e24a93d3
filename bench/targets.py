"""The benchmark targets: their configuration files and how each is started.

Owns: writing a config for ``direct`` (PostgreSQL itself, nothing to start),
``pgbouncer-session``, ``pgbouncer-transaction``, ``pgpool2`` (pgpool-II from Debian),
``pgpool-tw``, ``pgpool-tw-transaction`` (its transaction pooling, issue #18),
``pgpool-tw-pure`` (its C relay turned off) and ``pgpool-tw-pypy``
into a fresh directory of the run's temp dir, and starting it on a free
loopback port as a subprocess run by hand (never a system service).  The two
transaction-mode targets get the same pool limits (``TRANSACTION_POOL``), so that they
compare like for like.  For a routed
workload the poolers that route (``ROUTING_TARGETS``) get two backends, the primary and
its streaming replica, with the same routing settings (``routing_settings``), and
``pgpool-tw-single`` is pgpool-tw with the primary alone, the yardstick for routing's
cost.  pgbouncer and pgpool-II run as the ``postgres`` OS user when we are root.

Every pooler reaches PostgreSQL over TCP on 127.0.0.1, as pgbench reaches the poolers.

Must never: touch a system-wide config, pid file or socket dir, or listen off loopback.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

from procs import Server, StartError, descendants, give_to, select_one, server_user

from pgpool_tw_dev.devdb import TempPostgres, free_port

TARGETS = (
    "direct",
    "pgbouncer-session",
    "pgbouncer-transaction",
    "pgpool2",
    "pgpool-tw",
    "pgpool-tw-transaction",
    "pgpool-tw-pure",
    "pgpool-tw-pypy",
)
#: Run only when named in --targets: the default run stays the session-mode comparison
#: it has been (and under 10 minutes).
NAMED_ONLY = ("pgpool-tw-transaction",)
#: The pairs the issues' targets compare, PgBouncer first, one per pool mode: the report
#: reads each pgpool-tw target against its own mode's PgBouncer.
PAIRS = (("pgbouncer-session", "pgpool-tw"), ("pgbouncer-transaction", "pgpool-tw-transaction"))
#: The targets that load balance reads over a primary and a replica (routed workloads).
ROUTING_TARGETS = ("pgpool2", "pgpool-tw", "pgpool-tw-pure", "pgpool-tw-pypy")
#: pgpool-tw with the primary alone, run beside routed pgpool-tw; not a --targets choice.
SINGLE = "pgpool-tw-single"
#: The role pgbench, psql and the poolers' replication check log in as.
BENCH_ROLE = "postgres"
#: pgpool-tw on CPython with its C relay turned off (pgpool_tw/engine/speedups.py).
PURE_PYTHON_ENV = {"PGPOOL_TW_PURE_PYTHON": "1"}
#: pgpool-tw on PyPy: the venv bench/run makes when Debian's pypy3 is installable.
PYPY_TWISTD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-pypy", "bin", "twistd"
)


BINARIES = {
    "pgbouncer-session": "pgbouncer",
    "pgbouncer-transaction": "pgbouncer",
    "pgpool2": "pgpool",
}

# pgbouncer refuses more clients than this; the memory part opens 10,000.
MAX_CLIENT_CONN = 11000
#: Both transaction-mode targets' pool limits, in both programs' words (issue #18: 20
#: server connections; room for S5's 500 clients and psql's checks).  Every other pool
#: setting is left at its default, which the two programs share (min_pool_size 0,
#: reserve_pool_size 0, query_wait_timeout 120, server_idle_timeout 600).
TRANSACTION_POOL = {"default_pool_size": 20, "max_client_conn": 1000}
# Room above the largest pgbench client count (psql's readiness check, one spare or so).
SPARE_SLOTS = 5
START_ATTEMPTS = 3
CHILDREN_TIMEOUT = 60.0


def default_targets() -> list[str]:
    """Every target but the NAMED_ONLY ones, less pgpool-tw-pypy when its venv is missing."""
    return [
        t
        for t in TARGETS
        if t not in NAMED_ONLY and (t != "pgpool-tw-pypy" or os.path.exists(PYPY_TWISTD))
    ]


def pool_sizing(max_clients: int) -> str:
    """The pool limits of every target, for the report's header (``Bench._meta``)."""
    slots = max_clients + SPARE_SLOTS
    tx = TRANSACTION_POOL
    return (
        f"pgpool-II and pgpool-tw num_init_children={slots} max_pool=1; pgbouncer-session "
        f"default_pool_size={slots} max_client_conn={MAX_CLIENT_CONN}; pgbouncer-transaction "
        f"and pgpool-tw-transaction (pool_mode transaction) default_pool_size="
        f"{tx['default_pool_size']} max_client_conn={tx['max_client_conn']}, every other "
        "pool setting at its default"
    )


def pgbouncer_of(target: str) -> str:
    """The PgBouncer target ``target`` is compared with: its PAIRS partner, else session's."""
    return next((bouncer for bouncer, tw in PAIRS if tw == target), "pgbouncer-session")


# ``python -m twisted`` is ``twist`` (no -n); this is ``twistd`` itself.
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


@dataclass
class Running:
    """A started target: where pgbench connects, and whose CPU and memory we read."""

    name: str
    port: int
    cpu_pid: int  # root of the process tree whose CPU time is measured
    cpu_of: str  # "pooler" or "PostgreSQL" (for direct)
    server: Optional[Server] = None  # None for direct: PostgreSQL is not ours to stop here

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def find_binary(name: str) -> Optional[str]:
    """``name`` on PATH or in /usr/sbin (Debian puts pgbouncer and pgpool there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def missing_binaries(targets: list[str]) -> list[str]:
    """The programs the chosen targets need that are not installed."""
    needed = {BINARIES[t] for t in targets if t in BINARIES}
    missing = sorted(name for name in needed if find_binary(name) is None)
    if "pgpool-tw-pypy" in targets and not os.path.exists(PYPY_TWISTD):
        missing.append(PYPY_TWISTD)
    return missing


def _quote(value: str) -> str:
    """A quoted pgpool.conf value (pgpool-II and pgpool-tw share PostgreSQL's rules)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


class Launcher:
    """Starts targets in front of one PostgreSQL, each in its own fresh directory."""

    def __init__(
        self,
        pg: TempPostgres,
        root: str,
        max_clients: int,
        replica: Optional[TempPostgres] = None,
    ) -> None:
        self.pg = pg
        self.replica = replica
        self.root = root
        self.max_clients = max_clients
        self.user = server_user()

    def start(self, name: str, idle_clients: bool = False, routed: bool = False) -> Running:
        """Start ``name`` and return it once ``psql -c 'select 1'`` through it works.

        ``idle_clients`` configures it to keep clients that never log in (the memory
        part): ``authentication_timeout = 0`` / ``client_login_timeout = 0``.
        ``routed`` gives a routing target both backends (a replica must have been given).
        """
        if routed and (self.replica is None or name not in ROUTING_TARGETS + (SINGLE,)):
            raise ValueError(f"target {name!r} cannot run a routed workload here")
        if name == "direct":
            ok, error = select_one(self.pg.port)
            if not ok:
                raise StartError(f"target direct: PostgreSQL does not answer: {error}")
            assert self.pg.pid is not None
            return Running(name, self.pg.port, self.pg.pid, "PostgreSQL")
        for attempt in range(1, START_ATTEMPTS + 1):
            server = self._configure(name, idle_clients, routed and name != SINGLE)
            try:
                server.start()
                if name == "pgpool2":
                    self._wait_children(server, self.max_clients + SPARE_SLOTS)
            except StartError:
                server.stop()
                # A free port can be taken between free_port() and the bind: retry that.
                if attempt < START_ATTEMPTS and "in use" in server.log_tail():
                    continue
                raise
            except BaseException:  # a signal: nothing we started may outlive this call
                server.stop()
                raise
            return Running(name, server.port, server.pid, "pooler", server)
        raise AssertionError("unreachable")

    def _configure(self, name: str, idle_clients: bool, routed: bool) -> Server:
        workdir = tempfile.mkdtemp(prefix=f"{name}-", dir=self.root)
        os.chmod(workdir, 0o755)
        port = free_port()
        routing = self.routing_settings() if routed else None
        if name.startswith("pgbouncer-"):
            return self._pgbouncer(name, workdir, port, idle_clients)
        if name == "pgpool2":
            return self._pgpool2(workdir, port, routing)
        if name in ("pgpool-tw", SINGLE):
            return self._pgpool_tw(workdir, port, idle_clients, None, name, None, routing)
        if name == "pgpool-tw-transaction":
            return self._pgpool_tw(
                workdir, port, idle_clients, None, name, None, None, TRANSACTION_POOL
            )
        if name == "pgpool-tw-pure":
            return self._pgpool_tw(
                workdir, port, idle_clients, None, name, PURE_PYTHON_ENV, routing
            )
        if name == "pgpool-tw-pypy":
            return self._pgpool_tw(workdir, port, idle_clients, [PYPY_TWISTD], name, None, routing)
        raise ValueError(f"unknown target {name!r}")

    def routing_settings(self) -> dict[str, object]:
        """The pgpool.conf lines routed pgpool-II and routed pgpool-tw share, word for word.

        Streaming replication with load balancing, node 0 the primary and node 1 its
        replica at equal weights, the replication check as the bench role (trust: no
        password, so pool_passwd is not needed) every 10 s (both programs' default), and
        no health checks or failover, which the benchmark has no use for.
        """
        assert self.replica is not None
        return {
            "backend_clustering_mode": "streaming_replication",
            "load_balance_mode": True,
            "backend_hostname0": self.pg.host,
            "backend_port0": self.pg.port,
            "backend_weight0": 1,
            "backend_flag0": "DISALLOW_TO_FAILOVER",
            "backend_hostname1": self.replica.host,
            "backend_port1": self.replica.port,
            "backend_weight1": 1,
            "backend_flag1": "DISALLOW_TO_FAILOVER",
            "sr_check_period": 10,
            "sr_check_user": BENCH_ROLE,
            "sr_check_password": "",
            "sr_check_database": "postgres",
            "health_check_period": 0,
        }

    @staticmethod
    def _wait_children(server: Server, children: int) -> None:
        """pgpool-II answers before it has forked all its children: wait for the rest, so
        that forking them is not measured as the run's CPU."""
        deadline = time.monotonic() + CHILDREN_TIMEOUT
        while len(descendants(server.pid)) <= children:
            if time.monotonic() > deadline:
                raise StartError(
                    f"target pgpool2 forked only {len(descendants(server.pid)) - 1} of "
                    f"{children} children within {CHILDREN_TIMEOUT:g}s; log tail "
                    f"({server.log_path}):\n{server.log_tail()}"
                )
            time.sleep(0.1)

    # -- one method per kind of target ----------------------------------------------------

    def _pgbouncer(self, name: str, workdir: str, port: int, idle_clients: bool) -> Server:
        mode = name.split("-", 1)[1]
        pool_size = self.max_clients + SPARE_SLOTS
        max_client_conn = MAX_CLIENT_CONN  # the memory part's 10,000 idle clients fit
        if mode == "transaction":
            pool_size = TRANSACTION_POOL["default_pool_size"]
            if not idle_clients:
                max_client_conn = TRANSACTION_POOL["max_client_conn"]
        backend = f"host={self.pg.host} port={self.pg.port}"
        lines = [
            "[databases]",
            f"bench = {backend} dbname=bench",
            f"postgres = {backend} dbname=postgres",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            f"unix_socket_dir = {workdir}",
            "auth_type = trust",
            f"auth_file = {workdir}/userlist.txt",
            f"pool_mode = {mode}",
            f"max_client_conn = {max_client_conn}",
            f"default_pool_size = {pool_size}",
            f"pidfile = {workdir}/pgbouncer.pid",
            "admin_users = postgres",
            "ignore_startup_parameters = extra_float_digits",
        ]
        if idle_clients:
            # Keep clients that never log in, and accept them at once: with Linux's
            # TCP_DEFER_ACCEPT (pgbouncer's default) the kernel holds a connection that
            # sends nothing away from accept() for a second or more.
            lines += ["client_login_timeout = 0", "tcp_defer_accept = 0"]
        _write(os.path.join(workdir, "pgbouncer.ini"), "\n".join(lines) + "\n")
        _write(os.path.join(workdir, "userlist.txt"), '"postgres" ""\n')
        give_to(workdir, self.user)
        argv = [_need(find_binary("pgbouncer"), "pgbouncer"), "pgbouncer.ini"]
        return Server(name, argv, workdir, os.path.join(workdir, "run.log"), port, self.user)

    def _pgpool2(
        self, workdir: str, port: int, routing: Optional[dict[str, object]] = None
    ) -> Server:
        settings: dict[str, object] = {
            "backend_clustering_mode": "raw",
            "listen_addresses": "127.0.0.1",
            "port": port,
            "socket_dir": workdir,
            "pcp_listen_addresses": "127.0.0.1",
            "pcp_port": free_port(),
            "pcp_socket_dir": workdir,
            "wd_ipc_socket_dir": workdir,
            "pid_file_name": os.path.join(workdir, "pgpool.pid"),
            "logdir": workdir,
            "memqcache_oiddir": os.path.join(workdir, "oiddir"),
            "backend_hostname0": self.pg.host,
            "backend_port0": self.pg.port,
            "backend_weight0": 1,
            "backend_flag0": "DISALLOW_TO_FAILOVER",
            "num_init_children": self.max_clients + SPARE_SLOTS,
            "max_pool": 1,
            "connection_cache": True,
            "load_balance_mode": False,
            "health_check_period": 0,
            "sr_check_period": 0,
            "failover_on_backend_error": False,
            "enable_pool_hba": False,
            "reserved_connections": 0,
            "log_destination": "stderr",
            "logging_collector": False,
        }
        if routing is not None:
            settings.update(routing)
        _write(os.path.join(workdir, "pgpool.conf"), _pgpool_conf(settings))
        _write(os.path.join(workdir, "pcp.conf"), "")
        _write(os.path.join(workdir, "pool_hba.conf"), "host all all 127.0.0.1/32 trust\n")
        give_to(workdir, self.user)
        pgpool = _need(find_binary("pgpool"), "pgpool")
        argv = [pgpool, "-n", "-f", "pgpool.conf", "-F", "pcp.conf", "-a", "pool_hba.conf"]
        argv = [os.path.join(workdir, a) if a.endswith(".conf") else a for a in argv]
        return Server("pgpool2", argv, workdir, os.path.join(workdir, "run.log"), port, self.user)

    def _pgpool_tw(
        self,
        workdir: str,
        port: int,
        idle_clients: bool,
        head: Optional[list[str]] = None,
        name: str = "pgpool-tw",
        env: Optional[dict[str, str]] = None,
        routing: Optional[dict[str, object]] = None,
        transaction_pool: Optional[dict[str, int]] = None,
    ) -> Server:
        """pgpool-tw; with ``transaction_pool``, in transaction mode with those limits.

        num_init_children stays as in session mode: it bounds session-mode clients only,
        and a pgpool-tw without transaction mode (which warns of the settings it does not
        know and pools by session) must still serve every client of the workload.
        """
        settings: dict[str, object] = {
            "listen_addresses": "127.0.0.1",
            "port": port,
            "socket_dir": workdir,
            "backend_hostname0": self.pg.host,
            "backend_port0": self.pg.port,
            "num_init_children": self.max_clients + SPARE_SLOTS,
            "max_pool": 1,
            "connection_cache": True,
        }
        if transaction_pool is not None:
            settings["pool_mode"] = "transaction"
            settings.update(transaction_pool)
            if idle_clients:  # the memory part's 10,000 idle clients, as for PgBouncer
                settings["max_client_conn"] = MAX_CLIENT_CONN
        if idle_clients:
            settings["authentication_timeout"] = 0
        if routing is not None:
            settings.update(routing)
        conf = os.path.join(workdir, "pgpool.conf")
        _write(conf, _pgpool_conf(settings))
        if head is None:
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            head = [twistd] if os.path.exists(twistd) else [sys.executable, "-c", _TWISTD]
        # twistd inherits our RLIMIT_NOFILE, raised by bench.py before anything starts.
        argv = head + ["-n", "--pidfile=", "pgpool", "-c", conf]
        return Server(name, argv, workdir, os.path.join(workdir, "run.log"), port, env=env)


def _pgpool_conf(settings: dict[str, object]) -> str:
    lines = ["# written by bench/targets.py"]
    for name, value in settings.items():
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, str):
            text = _quote(value)
        else:
            text = str(value)
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


def _need(path: Optional[str], name: str) -> str:
    if path is None:
        raise StartError(f"{name} is not installed (bench/run installs it with apt-get)")
    return path
