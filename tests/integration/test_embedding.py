"""pgpool-tw inside someone else's Twisted application: services, observers, the example .tac.

The pooler is built from the public API (``PgpoolService``, ``from_file``,
``add_observer``) and runs in trial's reactor beside other services; the last
test runs ``etc/pgpool-tw.tac`` under a real ``twistd -ny``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any

import psycopg
from twisted.application.service import IService, IServiceCollection, MultiService, Service
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.persisted.sob import loadValueFromFile
from zope.interface import implementer
from zope.interface.verify import verifyObject

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.service import PgpoolService
from pgpool_tw.stats.events import IPoolEvents, ServerInfo, SessionInfo
from pgpool_tw_dev.devdb import free_port
from tests.e2e.pooler import TWISTD, client_env, make_temp_dir, pg_bin, quote_conf
from tests.integration.harness import PoolerTestCase, eventually

TAC = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "pgpool-tw.tac")


@implementer(IPoolEvents)
class Recorder:
    """Keeps every event as ``(name, *arguments)``."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def names(self) -> list[str]:
        return [event[0] for event in self.events]

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [event for event in self.events if event[0] == name]

    def client_session_started(self, session: SessionInfo) -> None:
        self.events.append(("client_session_started", session))

    def client_session_ended(self, session: SessionInfo) -> None:
        self.events.append(("client_session_ended", session))

    def server_connection_opened(self, server: ServerInfo) -> None:
        self.events.append(("server_connection_opened", server))

    def server_connection_closed(self, server: ServerInfo) -> None:
        self.events.append(("server_connection_closed", server))

    def backend_status_changed(self, address: str, status: str) -> None:
        self.events.append(("backend_status_changed", address, status))


@implementer(IPoolEvents)
class Exploding:
    """An observer whose every method raises."""

    def _boom(self, *args: Any) -> None:
        raise RuntimeError("observer exploded")

    client_session_started = client_session_ended = _boom
    server_connection_opened = server_connection_closed = backend_status_changed = _boom


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoService(Service):
    """The other service of the application: a TCP echo server on an ephemeral port."""

    def __init__(self) -> None:
        self.listening: Any = None

    @property
    def port(self) -> int:
        return int(self.listening.getHost().port)

    def startService(self) -> None:
        super().startService()
        self.listening = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return defer.maybeDeferred(self.listening.stopListening)


def echo(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(len(data))


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def session(dsn: str) -> tuple[int, int]:
    """One session: its server pid, and select 1's answer."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("select pg_backend_pid(), 1").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def query(conn: psycopg.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return row[0] if row else None


def query_error(conn: psycopg.Connection, sql: str) -> BaseException:
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        return e
    raise AssertionError(f"{sql!r} did not fail")


class EmbeddingTestCase(PoolerTestCase):
    def write_conf(self, port: int = 0, **extra: Any) -> str:
        directory = make_temp_dir(self, "pgtw-emb-")
        values: dict[str, Any] = {
            "listen_addresses": "127.0.0.1",
            "port": port,
            "socket_dir": directory,
            "backend_hostname0": self.pg.host,
            "backend_port0": self.pg.port,
        }
        values.update(extra)
        path = os.path.join(directory, "pgpool.conf")
        with open(path, "w", encoding="utf-8") as conf:
            for name, value in values.items():
                text = quote_conf(value) if isinstance(value, str) else str(value)
                conf.write(f"{name} = {text}\n")
        return path


class MultiServiceTests(EmbeddingTestCase):
    @defer.inlineCallbacks
    def test_pooler_beside_another_service(self):
        """A from_file pooler and an echo service in one MultiService start and stop together."""
        user, db = self.role_and_db()
        app = MultiService()
        other = EchoService()
        other.setServiceParent(app)
        pooler = PgpoolService.from_file(self.write_conf(), reactor)
        pooler.setServiceParent(app)
        app.privilegedStartService()
        app.startService()
        self.addCleanup(lambda: app.stopService() if app.running else None)
        self.assertTrue(pooler.running and other.running)

        pid, one = yield self.in_thread(session, self.dsn(pooler, user, db))
        self.assertEqual(one, 1)
        self.assertEqual((yield self.in_thread(echo, other.port, b"ping")), b"ping")
        held = yield self.in_thread(psycopg.connect, self.dsn(pooler, user, db), autocommit=True)
        self.addCleanup(held.close)
        self.assertEqual((yield self.in_thread(query, held, "select 2")), 2)
        pooler_port, echo_port = pooler.port, other.port

        yield app.stopService()
        self.assertFalse(pooler.running or other.running)
        # Stopping waited for the pooler to drain: nothing of it is left open.
        self.assertEqual(len(pooler.factory.clients), 0)
        self.assertEqual(len(pooler.factory.servers.live), 0)
        self.assertTrue((yield self.in_thread(refuses, pooler_port)))
        self.assertTrue((yield self.in_thread(refuses, echo_port)))
        error = yield self.in_thread(query_error, held, "select 3")
        self.assertIsInstance(error, psycopg.OperationalError)
        gone = yield eventually(lambda: not self.server_pids(user))
        self.assertTrue(gone, self.server_pids(user))

    @defer.inlineCallbacks
    def test_stopped_pooler_starts_again(self):
        """A pooler stopped and started again pools servers again and its next stop drains."""
        user, db = self.role_and_db()
        pooler = self.start_pooler()
        yield self.in_thread(session, self.dsn(pooler, user, db))
        yield pooler.stopService()
        pooler.startService()
        first, _ = yield self.in_thread(session, self.dsn(pooler, user, db))
        yield eventually(lambda: pooler.pool.idle_count == 1, 2.0)
        second, _ = yield self.in_thread(session, self.dsn(pooler, user, db))
        self.assertEqual(first, second, "the restarted pooler did not reuse the server")
        held = yield self.in_thread(psycopg.connect, self.dsn(pooler, user, db), autocommit=True)
        self.addCleanup(held.close)
        yield pooler.stopService()
        self.assertEqual(pooler.ports, [], "the second stop left the listeners open")
        self.assertEqual(len(pooler.factory.clients), 0, "the second stop left a client open")


class ObserverTests(EmbeddingTestCase):
    @defer.inlineCallbacks
    def test_observer_sees_session_and_server(self):
        """An IPoolEvents observer sees a session with its real server pid, and the server."""
        user, db = self.role_and_db()
        pooler = self.start_pooler()
        recorder = Recorder()
        verifyObject(IPoolEvents, recorder)
        pooler.add_observer(recorder)
        dsn = self.dsn(pooler, user, db, application_name="emb-app")
        pid, _ = yield self.in_thread(session, dsn)
        ended = yield eventually(lambda: bool(recorder.of("client_session_ended")))
        self.assertTrue(ended, recorder.events)

        closed = yield eventually(lambda: pooler.pool.idle_count == 1, 2.0)
        self.assertTrue(closed, "the server was not pooled")
        self.assertEqual(pooler.close_idle(), 1)
        closed = yield eventually(lambda: bool(recorder.of("server_connection_closed")))
        self.assertTrue(closed, recorder.events)

        address = f"{self.pg.host}:{self.pg.port}"
        self.assertEqual(
            recorder.names(),
            [
                "server_connection_opened",
                "backend_status_changed",
                "client_session_started",
                "client_session_ended",
                "server_connection_closed",
            ],
        )
        server = ServerInfo(address, user, db, pid)
        self.assertEqual(
            recorder.of("server_connection_opened"), [("server_connection_opened", server)]
        )
        self.assertEqual(
            recorder.of("server_connection_closed"), [("server_connection_closed", server)]
        )
        self.assertEqual(
            recorder.of("backend_status_changed"), [("backend_status_changed", address, "up")]
        )
        (_, started), (_, ended_info) = recorder.of("client_session_started") + recorder.of(
            "client_session_ended"
        )
        self.assertEqual(started, ended_info)
        self.assertEqual((started.user, started.database), (user, db))
        self.assertEqual(started.application_name, "emb-app")
        self.assertEqual(started.server_pid, pid)
        self.assertTrue(started.client.startswith("127.0.0.1:"), started.client)

    @defer.inlineCallbacks
    def test_observer_sees_unreachable_backend(self):
        """A dead backend port is reported once: backend_status_changed(address, 'unreachable')."""
        user, db = self.role_and_db()
        dead = free_port()
        pooler = self.start_pooler(backends=(BackendNode(0, "127.0.0.1", dead),))
        recorder = Recorder()
        pooler.add_observer(recorder)
        for _ in range(2):
            with self.assertRaises(psycopg.OperationalError):
                yield self.in_thread(session, self.dsn(pooler, user, db))
        self.assertEqual(
            recorder.events, [("backend_status_changed", f"127.0.0.1:{dead}", "unreachable")]
        )

    @defer.inlineCallbacks
    def test_raising_observer_does_not_break_session(self):
        """An observer that raises is logged; the session and the other observers carry on."""
        user, db = self.role_and_db()
        pooler = self.start_pooler()
        recorder = Recorder()
        exploding = Exploding()
        pooler.add_observer(exploding)
        pooler.add_observer(recorder)
        for _ in range(2):
            _, one = yield self.in_thread(session, self.dsn(pooler, user, db))
            self.assertEqual(one, 1)
        ended = yield eventually(lambda: len(recorder.of("client_session_ended")) == 2)
        self.assertTrue(ended, recorder.events)
        self.assertEqual(len(recorder.of("client_session_started")), 2)
        pooler.remove_observer(exploding)  # before the cleanup's stop closes the server
        self.assertTrue(self.flushLoggedErrors(RuntimeError))


class EarlySignalTests(EmbeddingTestCase):
    @defer.inlineCallbacks
    def test_sighup_before_start_is_a_reload(self):
        """A SIGHUP sent once the port accepts, before the service has started, reloads.

        A supervisor that reloads as soon as the pooler answers must not end the process:
        SIGHUP's default action would. twistd's service installs its handlers for SIGHUP
        and SIGUSR1 before it listens; the reload itself waits for the reactor.
        """
        numbers = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
        saved = {number: signal.getsignal(number) for number in numbers}
        self.addCleanup(lambda: [signal.signal(n, h) for n, h in saved.items()])
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        path = self.write_conf()
        pooler = PgpoolService.from_file(path, reactor, handle_signals=True)
        pooler.privilegedStartService()
        self.addCleanup(
            lambda: (
                pooler.stopService()
                if pooler.running
                else defer.gatherResults([port.stopListening() for port in pooler.ports])
            )
        )
        self.assertTrue(pooler.ports, "privilegedStartService did not listen")
        handler = signal.getsignal(signal.SIGHUP)
        # Never send the signal to the test process without a handler: it would end it.
        self.assertNotIn(handler, (signal.SIG_DFL, signal.SIG_IGN, None))
        self.assertFalse(pooler.config.log_connections)
        with open(path, "a", encoding="utf-8") as conf:
            conf.write("log_connections = on\n")
        os.kill(os.getpid(), signal.SIGHUP)  # this process: the pooler runs inside it
        pooler.startService()
        reloaded = yield eventually(lambda: pooler.config.log_connections, 5.0)
        self.assertTrue(reloaded, "the early SIGHUP was not applied")
        yield pooler.stopService()


class TacTests(EmbeddingTestCase):
    def test_tac_builds_application(self):
        """etc/pgpool-tw.tac yields an Application with a PgpoolService built from $PGPOOL_CONF."""
        conf = self.write_conf()
        self.patch(os, "environ", {**os.environ, "PGPOOL_CONF": conf})
        application = loadValueFromFile(TAC, "application")
        services = list(IServiceCollection(application))
        poolers = [s for s in services if isinstance(s, PgpoolService)]
        self.assertEqual(len(poolers), 1, services)
        self.assertEqual(poolers[0].config.path, conf)
        self.assertEqual(len(poolers[0].events.observers), 1)
        others = [s for s in services if not isinstance(s, PgpoolService)]
        self.assertTrue(others, "no service beside the pooler")
        self.assertFalse(IService(application).running)

    def test_tac_runs_under_twistd(self):
        """`twistd -ny etc/pgpool-tw.tac` serves psql, logs the session and stops on SIGTERM."""
        user, db = self.role_and_db()
        port = free_port()
        conf = self.write_conf(port=port)
        cwd = make_temp_dir(self, "pgtw-tac-")
        log_path = os.path.join(cwd, "twistd.log")
        env = client_env(PGPOOL_CONF=conf, PGPOOL_STATS_INTERVAL="0.2")
        env.pop("NOTIFY_SOCKET", None)  # not the supervisor of whatever runs the tests
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [TWISTD, "-ny", os.path.abspath(TAC)],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

        def stop() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

        self.addCleanup(stop)

        def log_text() -> str:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                return f.read()

        deadline = time.monotonic() + 15
        while refuses(port):
            self.assertIsNone(proc.poll(), log_text())
            self.assertLess(time.monotonic(), deadline, log_text())
            time.sleep(0.05)
        argv = [pg_bin("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(port)]
        out = subprocess.run(
            [*argv, "-U", user, "-d", db, "-c", "select 1"],
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=30,
        )
        self.assertEqual((out.returncode, out.stdout.strip()), (0, "1"), out.stderr)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # our own child, by its pid
        self.assertEqual(proc.wait(10), 0, log_text())
        text = log_text()
        self.assertIn("session started: client=127.0.0.1:", text)
        self.assertIn(f"user={user} database={db}", text)
        self.assertIn("session ended:", text)
        self.assertIn("pool stats: clients=", text)
        self.assertNotIn("Traceback", text)
