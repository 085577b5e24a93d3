"""A throwaway PostgreSQL cluster for the test suite, the benchmark and the demo.

Owns: finding the PostgreSQL binaries, ``initdb`` into a private temp dir, starting the
server on a free loopback port with a private unix socket dir, and tearing it all down
again.  The ``pgpool-tw-demo`` console script that runs the pooler in front of one is
``demo.py``.

Must never: import Twisted (the benchmark and the test helpers use it outside a reactor),
listen on anything but loopback, paste a name or a password into SQL (psql quotes them),
or signal any process but the postmaster it started itself.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Optional

AUTH_METHODS = ("trust", "md5", "scram-sha-256", "password")
_SERVER_USER = "postgres"  # the OS user the server runs as when we are root
_START_ATTEMPTS = 5
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
_PORT_IN_USE = ("Address already in use", "could not bind", "could not create any TCP/IP")
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.65535"


def find_pg_bindir() -> str:
    """Return the newest ``/usr/lib/postgresql/*/bin`` that holds ``initdb``."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = initdb.split("/")[4]
        key = tuple(int(part) for part in re.findall(r"\d+", version))
        found.append((key, os.path.dirname(initdb)))
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb")
    if on_path:
        return os.path.dirname(os.path.realpath(on_path))
    raise RuntimeError(
        "no PostgreSQL server binaries found (no /usr/lib/postgresql/*/bin/initdb and no "
        "initdb on PATH); install them with: apt-get install -y postgresql postgresql-contrib"
    )


def pg_bin(name: str) -> str:
    """A PostgreSQL client program (psql, pgbench) next to the server binaries."""
    return os.path.join(find_pg_bindir(), name)


def client_env(**extra: str) -> dict[str, str]:
    """Our environment for a client program: without libpq's PG* variables (they would
    redirect it), with a connect timeout, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago (bind to port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        free_port("::1")
    except OSError:
        return False
    return True


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def quote_conf(value: str) -> str:
    """Quote a value for postgresql.conf / pgpool.conf (any setting accepts quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote_conninfo(value: str) -> str:
    """Quote a value for a libpq keyword/value connection string."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _world_traversable(path: str) -> bool:
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def _clean_env() -> dict[str, str]:
    """Our environment minus libpq's PG* variables, which would redirect psql and pg_ctl."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCLIENTENCODING"] = "UTF8"
    return env


class TempPostgres:
    """A PostgreSQL cluster in a private temp dir, listening on loopback only."""

    def __init__(
        self,
        auth_method: str = "trust",
        settings: Optional[dict[str, str]] = None,
        base_dir: Optional[str] = None,
    ) -> None:
        if auth_method not in AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {AUTH_METHODS}, not {auth_method!r}")
        for name in settings or {}:
            if not _SETTING_NAME.match(name):
                raise ValueError(f"not a PostgreSQL setting name: {name!r}")
        self.auth_method = auth_method
        self.settings: dict[str, str] = dict(settings or {})
        self.host = "127.0.0.1"
        self.port = 0
        self.superuser = "postgres"
        self.ipv6 = False  # whether the server also listens on ::1
        self.pid: Optional[int] = None
        self.bindir = ""
        self.temp_dir = ""
        self.socket_dir = ""
        self.data_dir = ""
        self.log_file = ""
        self._base_dir = base_dir
        self._server_user: Optional[pwd.struct_passwd] = None
        self._atexit_registered = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> TempPostgres:
        """initdb, configure and start the server; return self once it accepts connections."""
        if self.pid is not None:
            return self
        self.bindir = find_pg_bindir()
        if os.geteuid() == 0:
            try:
                self._server_user = pwd.getpwnam(_SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, but there is no {_SERVER_USER!r} user to run "
                    "PostgreSQL as (PostgreSQL refuses to run as root)"
                ) from None
        atexit.register(self.stop)
        self._atexit_registered = True
        try:
            self._make_dirs()
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the temp dir. Safe to call twice."""
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        self._stop_server()
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = ""

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    # -- faults: what failover tests and the fault-injection script do to a server ---------

    def halt(self, mode: str = "fast") -> None:
        """Stop the server (pg_ctl stop -m ``mode``) and keep its data to ``restart``."""
        argv = [self._bin("pg_ctl"), "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60"]
        self._run_as_server(argv, check=False)
        if self.pid is not None and self._is_our_postmaster(self.pid):
            self._kill_postmaster(self.pid)
        self.pid = None

    def crash(self) -> None:
        """kill -9 of every process of the server at once (a machine that died): nothing
        is flushed, nothing says goodbye; the data stays to ``restart``.  The postmaster
        is stopped first so that it forks no more, then its children are killed, then
        it."""
        pid = self.pid
        if pid is None or not self._is_our_postmaster(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        self._signal_children(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self._is_our_postmaster(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.pid = None

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (``frozen``) or SIGCONT every process of the server: one that hangs.
        The postmaster is stopped first (it forks no more) and woken last."""
        pid = self.pid
        if pid is None:
            return
        if frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            self._signal_children(signal.SIGSTOP)
        else:
            self._signal_children(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _signal_children(self, sig: int) -> None:
        """Signal every child of the postmaster.  Each backend, walsender and background
        process calls setsid() when it starts (InitPostmasterChild), so the postmaster's
        process group holds it alone: its children are found by parent pid in /proc."""
        pid = self.pid
        if pid is None:
            return
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    text = stat.read()
            except OSError:
                continue  # gone already
            if int(text[text.rindex(b")") + 2 :].split()[1]) == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), sig)

    def restart(self) -> None:
        """Start a halted or crashed server again on its own port (crash recovery first)."""
        if self.pid is not None:
            return
        pidfile = os.path.join(self.data_dir, "postmaster.pid")
        if os.path.exists(pidfile):
            os.unlink(pidfile)  # a crashed postmaster's: it is gone (checked by crash())
        self._write_settings()
        argv = [self._bin("pg_ctl"), "start", "-D", self.data_dir, "-l", self.log_file]
        proc = self._run_as_server(argv + ["-w", "-t", "60"], check=False)
        if os.path.exists(pidfile):
            self.pid = self._read_pid()
        if proc.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not restart: {self._log_tail()}")

    def promote(self) -> None:
        """pg_ctl promote a standby, waiting until it accepts writes."""
        argv = [self._bin("pg_ctl"), "promote", "-D", self.data_dir, "-w", "-t", "60"]
        proc = self._run_as_server(argv, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl promote failed: {(proc.stdout + proc.stderr).strip()}")

    def run_as_server_argv(self, argv: list[str]) -> list[str]:
        """``argv`` as a command line that runs it as the server's OS user (for scripts a
        pooler runs as root, such as a failover_command that calls pg_ctl)."""
        user = self._server_user
        if user is None:
            return list(argv)
        return [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--clear-groups",
            *argv,
        ]

    # -- using it -------------------------------------------------------------------------

    def dsn(
        self,
        user: str = "postgres",
        dbname: str = "postgres",
        password: Optional[str] = None,
        host: Optional[str] = None,
        port: Optional[int] = None,
    ) -> str:
        """A libpq keyword/value string; TCP to 127.0.0.1 unless ``host`` says otherwise."""
        parts = {
            "host": self.host if host is None else host,
            "port": str(self.port if port is None else port),
            "user": user,
            "dbname": dbname,
        }
        if password is not None:
            parts["password"] = password
        return " ".join(f"{key}={_quote_conninfo(value)}" for key, value in parts.items())

    def psql(
        self,
        sql: str,
        dbname: str = "postgres",
        user: str = "postgres",
        variables: Optional[dict[str, str]] = None,
    ) -> str:
        """Run ``sql`` through psql over the unix socket and return its stdout.

        ``variables`` are set with ``-v`` so that the SQL can say ``:"name"`` (an identifier)
        or ``:'name'`` (a literal) and let psql do the quoting.
        """
        argv = [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", self.socket_dir, "-p", str(self.port), "-U", user, "-d", dbname]
        for name, value in (variables or {}).items():
            argv += ["-v", f"{name}={value}"]
        argv += ["-f", "-"]
        proc = subprocess.run(argv, input=sql, capture_output=True, text=True, env=_clean_env())
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def create_role(
        self, name: str, password: Optional[str] = None, superuser: bool = False
    ) -> None:
        """CREATE ROLE ... LOGIN, with the name and password quoted by psql."""
        sql = 'CREATE ROLE :"name" LOGIN'
        variables = {"name": name}
        if superuser:
            sql += " SUPERUSER"
        if password is not None:
            sql += " PASSWORD :'password'"
            variables["password"] = password
        self.psql(sql + ";\n", variables=variables)

    def create_database(self, name: str, owner: Optional[str] = None) -> None:
        """CREATE DATABASE, with the names quoted by psql."""
        sql = 'CREATE DATABASE :"name"'
        variables = {"name": name}
        if owner is not None:
            sql += ' OWNER :"owner"'
            variables["owner"] = owner
        self.psql(sql + ";\n", variables=variables)

    # -- internals ------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _make_dirs(self) -> None:
        parent = self._base_dir
        # The server user must be able to reach its data dir through our temp dir.
        root = self._server_user is not None
        if parent is None and root and not _world_traversable(tempfile.gettempdir()):
            parent = "/tmp"
        self.temp_dir = tempfile.mkdtemp(prefix="pgpool-tw-pg-", dir=parent)
        if len(self.temp_dir) + len("/sock") > _MAX_SOCKET_PATH:
            shutil.rmtree(self.temp_dir)
            self.temp_dir = tempfile.mkdtemp(prefix="pgpool-tw-pg-", dir="/tmp")
        os.chmod(self.temp_dir, 0o777)
        self.socket_dir = os.path.join(self.temp_dir, "sock")
        self.data_dir = os.path.join(self.temp_dir, "data")
        self.log_file = os.path.join(self.data_dir, "postgresql.log")
        os.mkdir(self.socket_dir)
        os.chmod(self.socket_dir, 0o777)
        os.mkdir(self.data_dir, 0o700)
        if self._server_user is not None:
            for path in (self.temp_dir, self.socket_dir, self.data_dir):
                os.chown(path, self._server_user.pw_uid, self._server_user.pw_gid)

    def _initdb(self) -> None:
        argv = [self._bin("initdb"), "-D", self.data_dir, "-A", "trust", "-U", self.superuser]
        argv += ["--no-sync", "-E", "UTF8", "--locale=C"]
        proc = self._run_as_server(argv, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("\n# Added by pgpool_tw_dev.devdb\ninclude 'pgpool_tw.conf'\n")
        with open(os.path.join(self.data_dir, "pg_hba.conf"), "w", encoding="utf-8") as hba:
            hba.write("local all all trust\n")
            # pgpool_tw_dev.replica's pg_basebackup and standbys stream over the unix socket.
            hba.write("local replication all trust\n")
            hba.write(f"host all all 127.0.0.1/32 {self.auth_method}\n")
            hba.write(f"host all all ::1/128 {self.auth_method}\n")

    def _write_settings(self) -> None:
        encryption = "md5" if self.auth_method == "md5" else "scram-sha-256"
        listen = "127.0.0.1,::1" if self.ipv6 else "127.0.0.1"
        settings = {
            "listen_addresses": listen,
            "port": str(self.port),
            "unix_socket_directories": self.socket_dir,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "128MB",
            "logging_collector": "off",  # stderr goes to pg_ctl -l, a file in the data dir
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "password_encryption": encryption,
        }
        settings.update(self.settings)
        path = os.path.join(self.data_dir, "pgpool_tw.conf")
        with open(path, "w", encoding="utf-8") as conf:
            for name, value in settings.items():
                conf.write(f"{name} = {quote_conf(value)}\n")
        if self._server_user is not None:
            os.chown(path, self._server_user.pw_uid, self._server_user.pw_gid)

    def _pick_port(self) -> None:
        self.ipv6 = _ipv6_loopback_works()
        for _ in range(50):
            port = free_port(self.host)
            if not self.ipv6 or _port_free("::1", port):
                self.port = port
                return
        raise RuntimeError("could not find a port free on both 127.0.0.1 and ::1")

    def _start_server(self) -> None:
        """pg_ctl start on a free port; on a port clash (a race with another process), retry."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._pick_port()
            self._write_settings()
            if os.path.exists(self.log_file):
                os.unlink(self.log_file)  # so the tail read below is this attempt's only
            argv = [self._bin("pg_ctl"), "start", "-D", self.data_dir, "-l", self.log_file]
            proc = self._run_as_server(argv + ["-w", "-t", "60"], check=False)
            log = self._log_tail()
            if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
                self.pid = self._read_pid()
            clash = any(text in log for text in _PORT_IN_USE)
            if proc.returncode == 0 and not clash:
                return
            # Failed, timed out, or up on only some of its addresses: make sure it is down.
            self._stop_server()
            if clash and attempt < _START_ATTEMPTS:
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start on port {self.port} "
                f"(pg_ctl: {(proc.stdout + proc.stderr).strip()}); server log tail:\n{log}"
            )

    def _stop_server(self) -> None:
        if self.data_dir and os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            argv = [self._bin("pg_ctl"), "stop", "-D", self.data_dir, "-m", "fast", "-w"]
            self._run_as_server(argv + ["-t", "30"], check=False)
        if self.pid is not None and self._is_our_postmaster(self.pid):
            self._kill_postmaster(self.pid)
        self.pid = None

    def _read_pid(self) -> int:
        with open(os.path.join(self.data_dir, "postmaster.pid"), encoding="utf-8") as pidfile:
            return int(pidfile.readline().strip())

    def _log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError as e:
            return f"(no server log: {e})"

    def _is_our_postmaster(self, pid: int) -> bool:
        """Whether ``pid`` is still the postmaster of *this* data dir (pids get reused)."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                return self.data_dir.encode() in cmdline.read()
        except FileNotFoundError:
            return False
        except OSError:
            pass
        try:  # no /proc: fall back to "some process with that pid exists"
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def _kill_postmaster(self, pid: int) -> None:
        """pg_ctl could not stop it: immediate shutdown, then SIGKILL, of our pid only."""
        for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self._is_our_postmaster(pid):
                    return
                time.sleep(0.05)

    def _run_as_server(self, argv: list[str], check: bool) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server user, in its own session (no terminal ^C)."""
        user = self._server_user
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=check,
            env=_clean_env(),
            cwd=self.temp_dir or "/",
            start_new_session=True,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )
