"""An in-process pooler in front of the shared throwaway PostgreSQL, for trial tests.

The pooler runs in trial's reactor from the public service API; blocking
clients (psycopg, the raw protocol client) run in threads so the reactor keeps
serving them.  Each test makes its own role and database.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
import time
from typing import Any, Callable, Optional, TypeVar

from twisted.internet import defer, reactor, threads
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.engine import fastpoll
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import PROTOCOL_3, cancel_request
from pgpool_tw.service import PgpoolService
from pgpool_tw_dev.devdb import TempPostgres
from tests.support import shared_postgres, skip_unless_postgres, unique_name

T = TypeVar("T")


class PoolerTestCase(unittest.TestCase):
    """Starts poolers on demand; stops them, and checks nothing leaked, after each test."""

    auth_method = "trust"
    timeout = 120
    #: Run the reactor with fastpoll's C iteration, as ``twistd pgpool`` does.
    c_loop = False

    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg: TempPostgres = shared_postgres(self.auth_method)
        if self.c_loop:
            if not fastpoll.c_loop_available():
                raise unittest.SkipTest("pgpool_tw.engine._speedups is not built or turned off")
            self.assertTrue(fastpoll.install(reactor))
            self.addCleanup(fastpoll.uninstall, reactor)

    def start_pooler(self, **settings: Any) -> PgpoolService:
        socket_dir = tempfile.mkdtemp(prefix="pgtw-")
        self.addCleanup(shutil.rmtree, socket_dir, True)
        base = Config(
            listen_addresses=("127.0.0.1",),
            port=0,
            socket_dirs=(socket_dir,),
            logdir=socket_dir,
            backends=(BackendNode(0, self.pg.host, self.pg.port),),
        )
        service = PgpoolService(dataclasses.replace(base, **settings), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def role_and_db(self, password: Optional[str] = None) -> tuple[str, str]:
        user, db = unique_name("u"), unique_name("d")
        self.pg.create_role(user, password)
        self.pg.create_database(db, owner=user)
        return user, db

    def dsn(self, service: PgpoolService, user: str, db: str, **extra: str) -> str:
        items = {"host": "127.0.0.1", "port": str(service.port), "user": user, "dbname": db}
        items.update(extra)
        return " ".join(f"{k}='{v}'" for k, v in items.items())

    def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return threads.deferToThread(fn, *args, **kwargs)

    def server_pids(self, user: str) -> set[int]:
        """Server pids PostgreSQL has open for ``user``, asked directly, not through the pooler."""
        out = self.pg.psql(
            "select pid from pg_stat_activity where usename = :'u'", variables={"u": user}
        )
        return {int(line) for line in out.split()}


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@defer.inlineCallbacks
def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> Any:
    """Wait, without blocking the reactor, until ``predicate()`` holds; return whether it did."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        yield sleep(0.02)
    return True


class RawClient:
    """A blocking client that speaks the protocol with the project's own builders.

    For what libpq will not do: vanish mid-transaction, send a stale cancel key,
    read a huge result slowly, or send malformed packets.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.reader = m.MessageReader()
        self.pid = 0
        self.key = 0
        self.params: dict[str, str] = {}
        self.status = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def startup(self, **params: str) -> list[tuple[int, bytes]]:
        body = m.INT32.pack(PROTOCOL_3)
        body += b"".join(m.cstring(k) + m.cstring(v) for k, v in params.items()) + b"\0"
        self.send(m.UINT32.pack(len(body) + 4) + body)
        return self.until_ready()

    def read_messages(self) -> list[tuple[int, bytes]]:
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the pooler")
            out = self.reader.feed(data)
            if out:
                return out

    def until_ready(self) -> list[tuple[int, bytes]]:
        seen: list[tuple[int, bytes]] = []
        while True:
            for kind, body in self.read_messages():
                seen.append((kind, body))
                if kind == m.BACKEND_KEY_DATA:
                    self.pid, self.key = m.parse_backend_key_data(body)
                elif kind == m.PARAMETER_STATUS:
                    name, value = m.parse_parameter_status(body)
                    self.params[name] = value
                elif kind == m.ERROR_RESPONSE and not self.pid:
                    return seen
                elif kind == m.READY_FOR_QUERY:
                    self.status = body[0]
                    return seen

    def query(self, sql: str) -> list[tuple[int, bytes]]:
        self.send(m.query(sql))
        return self.until_ready()

    def read_all(self) -> bytes:
        """Everything until the pooler closes (an ErrorResponse, usually)."""
        return recv_until_closed(self.sock)

    def close(self, terminate: bool = True) -> None:
        try:
            if terminate:
                self.send(m.terminate())
        finally:
            self.sock.close()


def recv_until_closed(sock: socket.socket) -> bytes:
    """Everything until the peer closes, resets, or the socket's timeout passes."""
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except OSError:
        pass
    return b"".join(chunks)


def send_cancel(port: int, pid: int, key: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(cancel_request(pid, key))
        sock.recv(1)


def error_fields(messages: list[tuple[int, bytes]]) -> dict[str, str]:
    for kind, body in messages:
        if kind == m.ERROR_RESPONSE:
            return m.parse_fields(body)
    return {}


def error_of(raw: bytes) -> dict[str, str]:
    """The fields of the first ErrorResponse in raw bytes from the pooler."""
    try:
        return error_fields(m.MessageReader().feed(raw))
    except Exception:
        return {}
