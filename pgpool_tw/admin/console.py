"""PgBouncer's admin console on a virtual database (``pgbouncer``, also ``pgpool``).

A client that logs in to one of those databases never reaches PostgreSQL: the pooler
checks its password itself (``enable_pool_hba``: pool_hba.conf and pool_passwd), lets
in only the users of ``admin_users`` and ``stats_users`` (PgBouncer's settings), and
answers its simple-protocol commands from the stats snapshot and the configuration.
This module is the console's side after the login: bytes in, bytes out, no socket.

Commands (PgBouncer's names and columns where pgpool-tw has the data):
``SHOW HELP``, ``SHOW VERSION``, ``SHOW POOLS``, ``SHOW STATS``, ``SHOW CONFIG``,
``SHOW DATABASES``, ``SHOW LISTS``, ``SHOW CLIENTS``, ``SHOW SERVERS`` for every
console user; ``RELOAD``, ``SHUTDOWN`` (fast), ``SHUTDOWN WAIT_FOR_SERVERS`` (a drain:
each client ends at its next transaction boundary), ``SHUTDOWN WAIT_FOR_CLIENTS`` (a
smart shutdown), ``KILL db``, ``KILL_CLIENT id`` (SHOW CLIENTS' id), ``RECONNECT [db]``,
``PAUSE [db]``, ``RESUME [db]`` and ``WAIT_CLOSE [db]`` for admin_users only.  PAUSE and
WAIT_CLOSE answer when what they wait for is done; the console reads nothing more from
that client meanwhile, as PgBouncer's.  Not yet: ``SUSPEND`` (refused with a line that
says so).  Console commands are not SQL: they are split into words, as PgBouncer's
console does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.python.failure import Failure

from pgpool_tw import __version__
from pgpool_tw.admin.snapshot import ClientRow, ServerRow, Snapshot, split_address
from pgpool_tw.config.settings import RESTART_REQUIRED, Config, value_text
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.rows import command_complete, result_set

_NOT_YET = ("SOCKETS", "ACTIVE_SOCKETS", "FDS", "MEM", "DNS_HOSTS")
_ADMIN_NOT_YET = ("SUSPEND",)

#: What a command answers: the bytes now, or later (PAUSE, WAIT_CLOSE).
Answer = Union[bytes, "defer.Deferred[bytes]"]


class ConsoleService:
    """What the console reads and may ask of the service (``service.py`` builds it)."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        config: Callable[[], Config],
        reload: Callable[[], object],
        shutdown: Callable[[], object],
        connections: Callable[[], tuple[list[ClientRow], list[ServerRow]]] = lambda: ([], []),
        kill: Callable[[str], object] = lambda database: 0,
        kill_client: Callable[[int], bool] = lambda client_id: False,
        reconnect: Callable[[Optional[str]], object] = lambda database: None,
        *,
        drain: Callable[[], object] = lambda: None,
        smart: Callable[[], object] = lambda: None,
        pause: Callable[[Optional[str]], defer.Deferred[None]] = lambda database: defer.succeed(
            None
        ),
        resume: Callable[[Optional[str]], Optional[str]] = lambda database: None,
        wait_close: Callable[[Optional[str]], defer.Deferred[None]] = (
            lambda database: defer.succeed(None)
        ),
    ) -> None:
        self.snapshot = snapshot
        self.config = config
        self.reload = reload
        self.shutdown = shutdown
        #: Every client and server connection (admin/snapshot.py's take_connections).
        self.connections = connections
        #: KILL db and RECONNECT [db] (session/context.py's kill_database, reconnect).
        self.kill = kill
        self.kill_client = kill_client
        self.reconnect = reconnect
        #: SHUTDOWN WAIT_FOR_SERVERS and WAIT_FOR_CLIENTS (service.py's drain, smart).
        self.drain = drain
        self.smart = smart
        #: PAUSE fires when paused, RESUME says why it cannot, WAIT_CLOSE fires when done.
        self.pause = pause
        self.resume = resume
        self.wait_close = wait_close

    def open(
        self, admin: bool, send: Callable[[bytes], None], close: Callable[[], None]
    ) -> Console:
        """A console for one logged-in client (``admin``: in admin_users)."""
        return Console(self, admin, send, close)


class Console:
    """One console client after its login."""

    def __init__(
        self,
        service: ConsoleService,
        admin: bool,
        send: Callable[[bytes], None],
        close: Callable[[], None],
    ) -> None:
        self.service = service
        self.admin = admin
        self.send = send
        self.close = close
        self._buf = bytearray()
        self._failed_batch = False
        #: A command's answer is awaited (PAUSE, WAIT_CLOSE): what follows waits too.
        self._waiting = False

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._waiting:
            return
        out: list[bytes] = []
        while len(buf) >= 5:
            length = int.from_bytes(buf[1:5], "big")
            if length < 4 or length > 1 << 20:
                self.send(b"".join(out) + m.error_response("08P01", "invalid message length"))
                self.close()
                return
            if len(buf) < 1 + length:
                break
            kind, body = buf[0], bytes(buf[5 : 1 + length])
            del buf[: 1 + length]
            if kind == ord("X"):
                self.send(b"".join(out))
                self.close()
                return
            if kind == ord("Q"):
                answer = self._query(m.decode(body.rstrip(b"\0")))
                if isinstance(answer, defer.Deferred):
                    self._waiting = True
                    if out:
                        self.send(b"".join(out))
                    answer.addErrback(_failed)
                    answer.addCallback(self._answered)
                    return
                out.append(answer)
                out.append(m.ready_for_query(m.IDLE))
            elif kind == ord("S"):
                self._failed_batch = False
                out.append(m.ready_for_query(m.IDLE))
            elif not self._failed_batch:
                self._failed_batch = True
                out.append(_error("0A000", "the admin console takes simple-protocol queries only"))
        if out:
            self.send(b"".join(out))

    def _answered(self, answer: bytes) -> None:
        """A command that waited is done: its answer, then what the client sent since."""
        self._waiting = False
        self.send(answer + m.ready_for_query(m.IDLE))
        self.feed(b"")

    # -- commands ---------------------------------------------------------------------

    def _query(self, text: str) -> Answer:
        words = text.strip().rstrip(";").split()
        if not words:
            return m.message(b"I")
        verb = words[0].upper()
        rest = [w.upper() for w in words[1:]]
        try:
            if verb == "SHOW" and len(rest) == 1:
                return self._show(rest[0])
            if verb in ("RELOAD", "SHUTDOWN") and not rest:
                return self._admin_command(verb)
            if verb == "SHUTDOWN" and rest in (["WAIT_FOR_SERVERS"], ["WAIT_FOR_CLIENTS"]):
                return self._admin_command(f"SHUTDOWN {rest[0]}")
            if verb in ("PAUSE", "RESUME", "WAIT_CLOSE") and len(words) <= 2:
                return self._pause_command(verb, words[1] if len(words) == 2 else None)
            if verb == "KILL" and len(words) == 2:
                return self._admin_command(verb, words[1])
            if verb == "KILL_CLIENT" and len(words) == 2:
                return self._kill_client(words[1])
            if verb == "RECONNECT" and len(words) <= 2:
                return self._admin_command(verb, words[1] if len(words) == 2 else None)
            if verb in _ADMIN_NOT_YET:
                return _error("0A000", f"{verb} is not supported by pgpool-tw's console yet")
        except Exception as e:  # a console command must never end the pooler's loop
            return _error("XX000", f"console command failed: {e}")
        return _error("42601", f"invalid command '{text.strip()}', use SHOW HELP;")

    def _kill_client(self, word: str) -> bytes:
        if not self.admin:
            return _error("42501", "KILL_CLIENT is for admin_users only")
        if not word.isdigit() or not self.service.kill_client(int(word)):
            return _error("42704", f"no client with id {word} (SHOW CLIENTS lists the ids)")
        return command_complete("KILL_CLIENT")

    def _pause_command(self, verb: str, database: Optional[str]) -> Answer:
        """PAUSE [db] answers once paused; RESUME [db] at once; WAIT_CLOSE [db] once the
        servers RECONNECT marked are closed."""
        if not self.admin:
            return _error("42501", f"{verb} is for admin_users only")
        if verb == "RESUME":
            why = self.service.resume(database)
            return _error("55000", f"RESUME: {why}") if why else command_complete(verb)
        wait = self.service.pause if verb == "PAUSE" else self.service.wait_close
        return wait(database).addCallback(lambda _: command_complete(verb))

    def _admin_command(self, verb: str, database: Optional[str] = None) -> bytes:
        if not self.admin:
            return _error("42501", f"{verb} is for admin_users only")
        if verb == "RELOAD":
            self.service.reload()
        elif verb == "SHUTDOWN WAIT_FOR_SERVERS":
            self.service.drain()
            verb = "SHUTDOWN"
        elif verb == "SHUTDOWN WAIT_FOR_CLIENTS":
            self.service.smart()
            verb = "SHUTDOWN"
        elif verb == "SHUTDOWN":
            self.service.shutdown()
        elif verb == "KILL":
            assert database is not None
            self.service.kill(database)
        else:
            self.service.reconnect(database)
        return command_complete(verb)

    def _show(self, what: str) -> bytes:
        show = _SHOWS.get(what)
        if show is not None:
            names, rows = show(self.service)
            return result_set(names, rows) if names else command_complete("SHOW")
        if what in _NOT_YET:
            return _error("0A000", f"SHOW {what} is not supported by pgpool-tw's console yet")
        return _error("42601", f"unknown SHOW item '{what}', use SHOW HELP;")


Rows = tuple[Sequence[str], list[list[Optional[str]]]]


def _error(code: str, text: str) -> bytes:
    return m.error_response(code, text, "ERROR")


def _failed(failure: Failure) -> bytes:
    return _error("XX000", f"console command failed: {failure.getErrorMessage()}")


def _help(service: ConsoleService) -> Rows:
    lines = [
        "SHOW HELP|VERSION|POOLS|STATS|CONFIG|DATABASES|LISTS|CLIENTS|SERVERS",
        "RELOAD",
        "SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]",
        "KILL <db>",
        "KILL_CLIENT <id>",
        "RECONNECT [<db>]",
        "PAUSE [<db>]",
        "RESUME [<db>]",
        "WAIT_CLOSE [<db>]",
    ]
    return ["help"], [[line] for line in lines]


def _version(service: ConsoleService) -> Rows:
    return ["version"], [[f"pgpool-tw {__version__}"]]


def _pool_mode(config: Config, user: str, database: str) -> str:
    return config.pool_mode_for(user, database)


def _pools(service: ConsoleService) -> Rows:
    snapshot, config = service.snapshot(), service.config()
    names = [
        "database", "user", "cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
        "sv_tested", "sv_login", "maxwait", "maxwait_us", "pool_mode",
    ]  # fmt: skip
    rows: list[list[Optional[str]]] = []
    for pool in sorted(snapshot.pools.values(), key=lambda p: (p.database, p.user)):
        servers = _server_states(pool.servers)
        whole, frac = divmod(pool.max_wait, 1.0)
        rows.append(
            [
                pool.database,
                pool.user,
                str(pool.clients.get("active", 0)),
                str(pool.waiting),
                str(servers.get("active", 0) + servers.get("running", 0)),
                str(servers.get("idle", 0)),
                str(servers.get("ready", 0)),
                "0",
                str(servers.get("login", 0)),
                str(int(whole)),
                str(int(frac * 1e6)),
                _pool_mode(config, pool.user, pool.database),
            ]
        )
    return names, rows


def _server_states(servers: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for states in servers.values():
        for state, count in states.items():
            out[state] = out.get(state, 0) + count
    return out


def _stats(service: ConsoleService) -> Rows:
    snapshot = service.snapshot()
    names = [
        "database", "total_xact_count", "total_query_count", "total_received", "total_sent",
        "total_wait_time",
    ]  # fmt: skip
    by_db: dict[str, list[float]] = {}
    for pool in snapshot.pools.values():
        sums = by_db.setdefault(pool.database, [0, 0, 0, 0, 0.0])
        for i, value in enumerate(
            (pool.xacts, pool.queries, pool.bytes_in, pool.bytes_out, pool.wait_time)
        ):
            sums[i] += value
    rows: list[list[Optional[str]]] = []
    for database, (xacts, queries, received, sent, waited) in sorted(by_db.items()):
        rows.append(
            [
                database,
                str(int(xacts)),
                str(int(queries)),
                str(int(received)),
                str(int(sent)),
                str(int(waited * 1e6)),
            ]
        )
    return names, rows


def _config(service: ConsoleService) -> Rows:
    config = service.config()
    defaults = Config()
    rows: list[list[Optional[str]]] = []
    for field in dataclasses.fields(Config):
        if field.name in ("path", "warnings", "given"):
            continue
        rows.append(
            [
                field.name,
                value_text(getattr(config, field.name)),
                value_text(getattr(defaults, field.name)),
                "no" if field.name in RESTART_REQUIRED else "yes",
            ]
        )
    return ["key", "value", "default", "changeable"], rows


def _databases(service: ConsoleService) -> Rows:
    snapshot, config = service.snapshot(), service.config()
    primary = next((node for node in snapshot.nodes if node.role == "primary"), None)
    databases = sorted({pool.database for pool in snapshot.pools.values()})
    names = ["name", "host", "port", "database", "pool_size", "pool_mode"]
    rows: list[list[Optional[str]]] = []
    for database in databases:
        rows.append(
            [
                database,
                primary.host if primary is not None else None,
                str(primary.port) if primary is not None else None,
                database,
                str(config.default_pool_size),
                config.pool_mode,
            ]
        )
    return names, rows


def _lists(service: ConsoleService) -> Rows:
    snapshot = service.snapshot()
    pools = snapshot.pools.values()
    servers: dict[str, int] = {}
    for pool in pools:
        for state, count in _server_states(pool.servers).items():
            servers[state] = servers.get(state, 0) + count
    clients = snapshot.clients
    items = [
        ("databases", len({pool.database for pool in pools})),
        ("users", len({pool.user for pool in pools})),
        ("pools", len(snapshot.pools)),
        ("used_clients", sum(count for state, count in clients.items() if state != "closed")),
        ("login_clients", clients.get("startup", 0) + clients.get("authenticating", 0)),
        ("free_servers", servers.get("idle", 0)),
        ("used_servers", sum(count for state, count in servers.items() if state != "idle")),
        ("nodes", len(snapshot.nodes)),
    ]
    return ["list", "items"], [[name, str(count)] for name, count in items]


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _clients(service: ConsoleService) -> Rows:
    clients, _ = service.connections()
    names = [
        "type", "user", "database", "state", "addr", "port", "connect_time", "tls",
        "application_name", "pinned", "id",
    ]  # fmt: skip
    rows: list[list[Optional[str]]] = []
    for client in sorted(clients, key=lambda c: (c.database, c.user, c.connected_at)):
        addr, port = split_address(client.address)
        rows.append(
            [
                "C",
                client.user,
                client.database,
                client.state,
                addr,
                port,
                _when(client.connected_at),
                "on" if client.tls else "",
                client.application_name,
                ",".join(client.pinned),
                str(client.id),
            ]
        )
    return names, rows


def _servers(service: ConsoleService) -> Rows:
    _, servers = service.connections()
    names = [
        "type", "user", "database", "state", "addr", "port", "node", "remote_pid",
        "connect_time", "application_name",
    ]  # fmt: skip
    rows: list[list[Optional[str]]] = []
    for server in sorted(servers, key=lambda s: (s.database, s.user, s.created)):
        addr, port = split_address(server.address)
        rows.append(
            [
                "S",
                server.user,
                server.database,
                server.state,
                addr,
                port,
                str(server.node),
                str(server.pid),
                _when(server.created),
                server.application_name,
            ]
        )
    return names, rows


_SHOWS: dict[str, Callable[[ConsoleService], Rows]] = {
    "HELP": _help,
    "VERSION": _version,
    "POOLS": _pools,
    "STATS": _stats,
    "CONFIG": _config,
    "DATABASES": _databases,
    "LISTS": _lists,
    "CLIENTS": _clients,
    "SERVERS": _servers,
}
