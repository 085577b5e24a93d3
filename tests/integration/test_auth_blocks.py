"""The auth building blocks against real peers: PostgreSQL's secrets and server, and libpq.

No pooler runs here: a blocking socket carries BackendAuth's answers to a throwaway
PostgreSQL, and a tiny blocking server carries FrontendAuth's challenges to psycopg (libpq),
so the sans-I/O pieces are proven against the real implementations before the lead wires
them into the Twisted sessions.
"""

from __future__ import annotations

import socket
import threading
from typing import Optional

import psycopg
import scramp
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.passwd import (
    Md5Secret,
    PlainSecret,
    ScramSecret,
    Secret,
    md5_entry,
    parse_secret,
    scram_entry,
)
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.auth import AuthResult, FrontendAuth
from pgpool_tw.protocol.backend_auth import BackendAuth, BackendAuthError
from pgpool_tw.protocol.startup import (
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
)
from pgpool_tw_dev.devdb import TempPostgres
from tests.support import shared_postgres, skip_unless_postgres, unique_name

# Non-ASCII and a soft hyphen (which SASLprep maps to nothing) prove our key derivation
# prepares passwords the way PostgreSQL does.
PASSWORD = "Pässwörd\u00ad-1"


def role_secret(pg: TempPostgres, password: str = PASSWORD) -> tuple[str, str]:
    """A new role with ``password`` and its rolpassword as PostgreSQL stored it."""
    name = unique_name("auth")
    pg.create_role(name, password=password)
    stored = pg.psql(
        "SELECT rolpassword FROM pg_authid WHERE rolname = :'n';", variables={"n": name}
    ).strip()
    return name, stored


def secret_of(entry: str) -> Secret:
    """The secret of a pool_passwd line."""
    return parse_secret(entry.split(":", 1)[1])


def recv_messages(sock: socket.socket, reader: m.MessageReader) -> list[tuple[int, bytes]]:
    """At least one whole message from ``sock``."""
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("peer closed")
        found = reader.feed(data)
        if found:
            return found


def backend_login(pg: TempPostgres, user: str, auth: BackendAuth) -> str:
    """Log in to ``pg`` as ``user`` answering with ``auth``; return current_user or the error.

    A BackendAuthError propagates; a server ErrorResponse comes back as 'ERROR <code>'.
    """
    startup = StartupMessage(params=(("user", user), ("database", "postgres")))
    with socket.create_connection((pg.host, pg.port), timeout=10) as sock:
        sock.sendall(startup.to_server_packet())
        reader = m.MessageReader()
        while True:
            for kind, body in recv_messages(sock, reader):
                if kind == m.ERROR_RESPONSE:
                    return "ERROR " + m.parse_fields(body)["C"]
                if kind == m.AUTHENTICATION and m.auth_code(body) != m.AUTH_OK:
                    reply = auth.receive(m.auth_code(body), body)
                    if reply:
                        sock.sendall(reply)
                elif kind == m.READY_FOR_QUERY:
                    sock.sendall(m.query("SELECT current_user"))
                elif kind == ord("D"):
                    (length,) = m.INT32.unpack_from(body, 2)
                    sock.sendall(m.terminate())
                    return body[6 : 6 + length].decode()


def client_key_from(secret: ScramSecret, user: str, password: str) -> Optional[bytes]:
    """The ClientKey FrontendAuth takes from scramp's client logging in with ``password``."""
    auth = FrontendAuth("scram-sha-256", user, secret, False)
    auth.start()
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    first = client.get_client_first().encode()
    reply, _ = auth.receive(b"SCRAM-SHA-256\0" + m.INT32.pack(len(first)) + first)
    assert reply is not None
    client.set_server_first(reply[9:].decode())
    reply, result = auth.receive(client.get_client_final().encode())
    assert result is not None and result.ok, result
    return result.client_key


class BackendAuthAgainstPostgresTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()

    def test_scram_entry_equals_postgres_secret(self) -> None:
        """scram_entry with PostgreSQL's salt and count writes exactly PostgreSQL's secret."""
        pg = shared_postgres("scram-sha-256")
        user, stored = role_secret(pg)
        secret = parse_secret(stored)
        assert isinstance(secret, ScramSecret)
        self.assertEqual(
            scram_entry(user, PASSWORD, secret.iterations, secret.salt), f"{user}:{stored}"
        )

    def test_md5_entry_equals_postgres_secret(self) -> None:
        """md5_entry writes exactly what an md5 cluster stores."""
        pg = shared_postgres("md5")
        user, stored = role_secret(pg)
        self.assertEqual(md5_entry(user, PASSWORD), f"{user}:{stored}")

    def test_scram_secret_with_proven_client_key_logs_in(self) -> None:
        """PostgreSQL's own SCRAM secret plus the client's proven ClientKey logs in."""
        pg = shared_postgres("scram-sha-256")
        user, stored = role_secret(pg)
        secret = parse_secret(stored)
        assert isinstance(secret, ScramSecret)
        key = client_key_from(secret, user, PASSWORD)
        self.assertEqual(backend_login(pg, user, BackendAuth(user, secret, key)), user)

    def test_stale_scram_secret_reports_salt(self) -> None:
        """A pool_passwd SCRAM entry made apart from the server's secret fails on the salt."""
        pg = shared_postgres("scram-sha-256")
        user, _ = role_secret(pg)
        secret = secret_of(scram_entry(user, PASSWORD))
        assert isinstance(secret, ScramSecret)
        auth = BackendAuth(user, secret, client_key_from(secret, user, PASSWORD))
        with self.assertRaises(BackendAuthError) as caught:
            backend_login(pg, user, auth)
        self.assertEqual(
            str(caught.exception), "the server's SCRAM salt differs from pool_passwd's"
        )

    def test_text_secret_logs_in_with_scram(self) -> None:
        """A TEXT entry runs a full SCRAM login; a wrong one is refused by the server."""
        pg = shared_postgres("scram-sha-256")
        user, _ = role_secret(pg)
        self.assertEqual(backend_login(pg, user, BackendAuth(user, PlainSecret(PASSWORD))), user)
        wrong = BackendAuth(user, PlainSecret(PASSWORD + "x"))
        self.assertEqual(backend_login(pg, user, wrong), "ERROR 28P01")

    def test_md5_secret_logs_in_with_md5(self) -> None:
        """PostgreSQL's md5 secret, and a TEXT entry, answer an md5 server."""
        pg = shared_postgres("md5")
        user, stored = role_secret(pg)
        secret = parse_secret(stored)
        self.assertIsInstance(secret, Md5Secret)
        self.assertEqual(backend_login(pg, user, BackendAuth(user, secret)), user)
        self.assertEqual(backend_login(pg, user, BackendAuth(user, PlainSecret(PASSWORD))), user)


class FakeServer:
    """One blocking login served by FrontendAuth on a loopback port, in a thread."""

    def __init__(self, method: str, secrets: dict[str, Secret]) -> None:
        self.method = method
        self.secrets = secrets
        self.result: Optional[AuthResult] = None
        self.error: Optional[BaseException] = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.listener.settimeout(10)
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                self._login(conn)
        except BaseException as e:  # reported to the test thread
            self.error = e
        finally:
            self.listener.close()

    def _login(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            buffer += conn.recv(65536)
            packet, used = read_startup_packet(buffer)
            if packet is None:
                continue
            buffer = buffer[used:]
            if isinstance(packet, (SSLRequest, GSSENCRequest)):
                conn.sendall(b"N")
                continue
            assert isinstance(packet, StartupMessage)
            break
        auth = FrontendAuth(self.method, packet.user, self.secrets.get(packet.user), False)
        conn.sendall(auth.start())
        reader = m.MessageReader()
        reader.feed(buffer)
        while self.result is None:
            for kind, body in recv_messages(conn, reader):
                assert kind == m.PASSWORD_MESSAGE, kind
                reply, self.result = auth.receive(body)
                if reply:
                    conn.sendall(reply)
        if not self.result.ok:
            conn.sendall(self.result.error_response())
            return
        conn.sendall(
            m.authentication_ok()
            + m.parameter_status("server_version", "16.0")
            + m.parameter_status("client_encoding", "UTF8")
            + m.parameter_status("standard_conforming_strings", "on")
            + m.parameter_status("integer_datetimes", "on")
            + m.backend_key_data(1, 2)
            + m.ready_for_query(m.IDLE)
        )
        while conn.recv(65536):  # until libpq's Terminate and close
            pass

    def finish(self) -> Optional[AuthResult]:
        """Wait for the login to end and return its result."""
        self.thread.join(10)
        if self.error is not None:
            raise self.error
        return self.result


def libpq_connect(port: int, user: str, password: str) -> None:
    """Connect with psycopg (libpq) and close again; raises OperationalError on refusal."""
    dsn = f"host=127.0.0.1 port={port} dbname=d sslmode=disable gssencmode=disable"
    with psycopg.connect(dsn, user=user, password=password, connect_timeout=10):
        pass


class FrontendAuthAgainstLibpqTests(SynchronousTestCase):
    def test_libpq_scram_login(self) -> None:
        """libpq (psycopg) logs in over SCRAM, with its empty SCRAM user name, and checks us."""
        user = "alice"
        secret = secret_of(scram_entry(user, PASSWORD))
        server = FakeServer("scram-sha-256", {user: secret})
        libpq_connect(server.port, user, PASSWORD)
        result = server.finish()
        assert result is not None
        self.assertTrue(result.ok)
        self.assertEqual(len(result.client_key or b""), 32)

    def test_libpq_wrong_password_sees_postgres_error(self) -> None:
        """libpq with a wrong password gets PostgreSQL's message, under md5 and SCRAM."""
        for method, entry in (("md5", md5_entry), ("scram-sha-256", scram_entry)):
            server = FakeServer(method, {"bob": secret_of(entry("bob", PASSWORD))})
            with self.assertRaises(psycopg.OperationalError) as caught:
                libpq_connect(server.port, "bob", "wrong")
            self.assertIn('password authentication failed for user "bob"', str(caught.exception))
            self.assertEqual(
                server.finish(),
                AuthResult(False, "28P01", 'password authentication failed for user "bob"'),
            )

    def test_libpq_md5_login_and_unknown_user(self) -> None:
        """libpq logs in with md5; an unknown user gets the wrong-password message."""
        server = FakeServer("md5", {"carol": secret_of(md5_entry("carol", PASSWORD))})
        libpq_connect(server.port, "carol", PASSWORD)
        result = server.finish()
        assert result is not None
        self.assertTrue(result.ok)
        server = FakeServer("md5", {})
        with self.assertRaises(psycopg.OperationalError) as caught:
            libpq_connect(server.port, "ghost", PASSWORD)
        self.assertIn('password authentication failed for user "ghost"', str(caught.exception))
        server.finish()
