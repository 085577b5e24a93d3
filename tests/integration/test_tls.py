"""TLS through an in-process pooler: the clients' leg, the servers' leg, hba and reload.

Certificates come from ``tests.certs`` (one CA that signs everything the tests trust, and an
unrelated one for the "wrong CA" cases).  The clients' leg is checked from the client's side
(libpq's ``ssl_in_use``, psql's ``\\conninfo``, and Python's ``ssl`` module for what libpq will
not do); the servers' leg by asking PostgreSQL itself over its unix socket (``pg_stat_ssl``),
so neither side's claim is taken on the pooler's word.  Two extra throwaway clusters run with
``ssl = on`` (one trust, one SCRAM), started lazily and stopped at exit like the shared one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from typing import Any, NamedTuple, Optional

import psycopg
from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import StartupMessage, ssl_request
from pgpool_tw.service import PgpoolService
from pgpool_tw_dev.devdb import TempPostgres
from tests.certs import CertificateAuthority, Issued
from tests.e2e.pooler import client_env, pg_bin, quote_conf
from tests.integration.harness import (
    PoolerTestCase,
    RawClient,
    error_fields,
    recv_until_closed,
)
from tests.support import unique_name

LOOPBACK = "127.0.0.1"
PASSWORD = "Tls pw'1"
NO_FILE = "/nonexistent/pgpool-tw-tls"  # libpq must find no root.crt, client cert or passfile
_SERVER_USER = "postgres"  # the OS user PostgreSQL runs as when the tests run as root


# --- certificates and the ssl = on clusters (lazy, one per process) ------------------


class Certs(NamedTuple):
    ca_file: str  # the CA that signed everything below
    other_ca_file: str  # an unrelated CA: trusting it must fail every verification
    ca: CertificateAuthority
    other: CertificateAuthority
    pooler: Issued  # the pooler's certificate A
    pooler_b: Issued  # certificate B for the reload test (same CA, another key and serial)
    postgres: Issued  # PostgreSQL's, readable by its OS user; names 127.0.0.1, not ::1
    directory: str


_lock = threading.Lock()
_certs: list[Certs] = []
_clusters: dict[str, TempPostgres] = {}


def certs() -> Certs:
    """The process-wide certificates, written once into a temp dir removed at exit."""
    with _lock:
        if not _certs:
            root = os.geteuid() == 0
            directory = tempfile.mkdtemp(prefix="pgtw-tls-", dir="/tmp" if root else None)
            os.chmod(directory, 0o755)  # the server's OS user reads its own files here
            atexit.register(shutil.rmtree, directory, True)
            ca, other = CertificateAuthority("main"), CertificateAuthority("other")
            owner = _SERVER_USER if root else None
            _certs.append(
                Certs(
                    ca.write_ca(directory),
                    other.write_ca(directory),
                    ca,
                    other,
                    ca.issue_server(directory, stem="pooler-a"),
                    ca.issue_server(directory, common_name="pooler-b.test", stem="pooler-b"),
                    ca.issue_server(directory, stem="postgres", owner=owner, addresses=(LOOPBACK,)),
                    directory,
                )
            )
        return _certs[0]


def ssl_postgres(auth_method: str) -> TempPostgres:
    """A running cluster with ``ssl = on`` for ``auth_method``, started on first use."""
    files = certs()
    with _lock:
        pg = _clusters.get(auth_method)
        if pg is None:
            settings = {
                "ssl": "on",
                "ssl_cert_file": files.postgres.cert,
                "ssl_key_file": files.postgres.key,
            }
            pg = TempPostgres(auth_method=auth_method, settings=settings).start()
            _clusters[auth_method] = pg
        return pg


# --- blocking clients (run them with in_thread) --------------------------------------


def connect(port: int, user: str, db: str, **params: Any) -> psycopg.Connection[Any]:
    """psycopg to the pooler on loopback; ``params`` are libpq's (sslmode, sslrootcert...)."""
    options: dict[str, Any] = {
        "sslrootcert": NO_FILE,
        "sslcert": NO_FILE,
        "sslkey": NO_FILE,
        "passfile": NO_FILE,
    }
    options.update(params)
    return psycopg.connect(
        host=LOOPBACK,
        port=port,
        user=user,
        dbname=db,
        connect_timeout=10,
        autocommit=True,
        **options,
    )


def client_view(port: int, user: str, db: str, **params: Any) -> tuple[bool, str]:
    """Log in and run a query: (whether libpq encrypts, current_user)."""
    with connect(port, user, db, **params) as conn:
        row = conn.execute("select current_user").fetchone()
        assert row is not None
        return bool(conn.pgconn.ssl_in_use), str(row[0])


def refusal(port: int, user: str, db: str, **params: Any) -> str:
    """libpq's error text for a login that should fail; '' when it logged in."""
    try:
        with connect(port, user, db, **params) as conn:
            conn.execute("select 1")
            return ""
    except psycopg.OperationalError as e:
        return str(e)


def query_on(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def psql(conninfo: str) -> subprocess.CompletedProcess[str]:
    """``psql -X -At -w <conninfo> -c 'select 1' -c '\\conninfo'`` with a clean environment."""
    env = client_env(PGPASSFILE=NO_FILE, PGSSLROOTCERT=NO_FILE, PGSSLCERT=NO_FILE)
    argv = [pg_bin("psql"), "-X", "-At", "-w", conninfo, "-c", "select 1", "-c", "\\conninfo"]
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60
    )


def _tls_wrap(
    sock: socket.socket,
    cert: Optional[Issued] = None,
    cafile: Optional[str] = None,
    alpn: Optional[list[str]] = None,
) -> ssl.SSLSocket:
    """SSLRequest, 'S', then a TLS handshake.

    Without ``cafile`` it trusts anything (the test checks what it got by hand); with it, it
    verifies the chain and that the certificate names 127.0.0.1, as verify-full does.
    ``alpn`` is offered as libpq 17 and later offer ``postgresql``.
    """
    sock.sendall(ssl_request())
    answer = sock.recv(1)
    if answer != b"S":
        raise AssertionError(f"SSLRequest answered {answer!r}, not S")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile)
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context.wrap_socket(sock, server_hostname=LOOPBACK if cafile else None)


def raw_login(port: int, user: str, db: str, tls: bool, cert: Optional[Issued] = None) -> Any:
    """A login by hand, plaintext or TLS (with an optional client certificate).

    Returns the ErrorResponse's fields, {} when ReadyForQuery came (then it says Terminate),
    or the exception's text when the connection broke first.
    """
    sock: socket.socket = socket.create_connection((LOOPBACK, port), timeout=10)
    try:
        if tls:
            sock = _tls_wrap(sock, cert)
        sock.sendall(StartupMessage(params=(("user", user), ("database", db))).to_server_packet())
        reader = m.MessageReader()
        while True:
            data = sock.recv(65536)
            if not data:
                return "closed without ErrorResponse or ReadyForQuery"
            for kind, body in reader.feed(data):
                if kind == m.ERROR_RESPONSE:
                    return m.parse_fields(body)
                if kind == m.READY_FOR_QUERY:
                    sock.sendall(m.terminate())
                    return {}
    except (OSError, AssertionError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        sock.close()


def presented_certificate(port: int, cafile: Optional[str] = None) -> bytes:
    """The DER of the certificate the pooler presents to a new TLS client."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        wrapped = _tls_wrap(sock, cafile=cafile)
        der = wrapped.getpeercert(binary_form=True)
        wrapped.close()
    assert der is not None
    return der


def alpn_handshake(port: int) -> Optional[str]:
    """A handshake offering ALPN ``postgresql``, as libpq 17+ does: the protocol selected."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        wrapped = _tls_wrap(sock, alpn=["postgresql"])
        selected = wrapped.selected_alpn_protocol()
        wrapped.close()
    return selected


def tls_session(port: int, user: str, db: str) -> RawClient:
    """A raw protocol session over TLS, logged in (no ALPN: any TLS client works)."""
    client = RawClient(port, LOOPBACK)
    client.sock = _tls_wrap(client.sock)
    messages = client.startup(user=user, database=db)
    if client.status == 0:
        client.close(terminate=False)
        raise AssertionError(f"TLS login failed: {error_fields(messages)}")
    return client


def sasl_mechanisms(port: int, user: str, db: str, tls: bool) -> list[str]:
    """The mechanisms of the first AuthenticationSASL the pooler sends (then hangs up)."""
    client = RawClient(port, LOOPBACK)
    try:
        if tls:
            client.sock = _tls_wrap(client.sock)
        client.send(StartupMessage(params=(("user", user), ("database", db))).to_server_packet())
        for kind, payload in client.read_messages():
            if kind == m.AUTHENTICATION and m.auth_code(payload) == m.AUTH_SASL:
                return [n.decode() for n in payload[4:].split(b"\0") if n]
            raise AssertionError(f"expected AuthenticationSASL, got {chr(kind)} {payload!r}")
        raise AssertionError("no message")
    finally:
        client.close()


def scalar(client: RawClient, sql: str) -> str:
    """The first column of the first row of a simple query, as text."""
    for kind, body in client.query(sql):
        if kind == ord("D"):
            length = m.INT32.unpack_from(body, 2)[0]
            return body[6 : 6 + length].decode()
        if kind == m.ERROR_RESPONSE:
            raise AssertionError(m.parse_fields(body))
    raise AssertionError(f"no row for {sql!r}")


def ssl_request_then_plaintext(port: int, user: str, db: str) -> bytes:
    """SSLRequest and a plaintext startup packet in one send; everything the pooler answers."""
    startup = StartupMessage(params=(("user", user), ("database", db))).to_server_packet()
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(ssl_request() + startup)
        return recv_until_closed(sock)


def plaintext_after_s(port: int, user: str, db: str) -> tuple[bytes, bytes]:
    """SSLRequest, wait for the answer, then a plaintext startup: (answer, what came after)."""
    startup = StartupMessage(params=(("user", user), ("database", db))).to_server_packet()
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(ssl_request())
        answer = sock.recv(1)
        try:
            sock.sendall(startup)
        except OSError:
            return answer, b""
        return answer, recv_until_closed(sock)


def authentication_seen(raw: bytes) -> bool:
    """Whether ``raw`` holds any Authentication or ParameterStatus message."""
    try:
        messages = m.MessageReader().feed(raw)
    except Exception:
        return False
    return any(kind in (m.AUTHENTICATION, m.PARAMETER_STATUS) for kind, _ in messages)


# --- the test cases ------------------------------------------------------------------


class TLSCase(PoolerTestCase):
    """A pooler with the clients' TLS on or off, in front of ``self.pg``."""

    def temp_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="pgtw-tls-t-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def tls_pooler(self, **settings: Any) -> PgpoolService:
        files = certs()
        base: dict[str, Any] = {
            "ssl": True,
            "ssl_cert": files.pooler.cert,
            "ssl_key": files.pooler.key,
        }
        base.update(settings)
        return self.start_pooler(**base)

    def hba_pooler(self, lines: list[str], **settings: Any) -> PgpoolService:
        """enable_pool_hba with these pool_hba.conf lines and no pool_passwd."""
        path = os.path.join(self.temp_dir(), "pool_hba.conf")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        return self.tls_pooler(enable_pool_hba=True, pool_hba_file=path, pool_passwd="", **settings)

    def server_leg_ssl(self, user: str, pg: Optional[TempPostgres] = None) -> list[str]:
        """pg_stat_ssl.ssl of every server connection ``user`` has, asked of PostgreSQL."""
        out = (pg or self.pg).psql(
            "select ssl from pg_stat_ssl join pg_stat_activity using (pid) where usename = :'u'",
            variables={"u": user},
        )
        return out.split()

    def open_session(self, port: int, user: str, db: str, **params: Any) -> Any:
        """A psycopg connection kept open for the test (closed in a thread afterwards)."""
        d = self.in_thread(connect, port, user, db, **params)

        def keep(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
            self.addCleanup(self.in_thread, conn.close)
            return conn

        return d.addCallback(keep)


class ClientLegTests(TLSCase):
    """TLS between clients and the pooler (ssl, ssl_cert, ssl_key, ssl_ca_cert)."""

    @defer.inlineCallbacks
    def test_require_encrypts_and_queries_work(self):
        """With ssl on, sslmode=require gets an encrypted session whose queries work."""
        user, db = self.role_and_db()
        service = self.tls_pooler()
        encrypted, who = yield self.in_thread(
            client_view, service.port, user, db, sslmode="require"
        )
        self.assertEqual((encrypted, who), (True, user))

    @defer.inlineCallbacks
    def test_verify_full_with_the_right_ca(self):
        """sslmode=verify-full to 127.0.0.1 trusts the pooler's certificate from its CA."""
        user, db = self.role_and_db()
        service = self.tls_pooler()
        encrypted, who = yield self.in_thread(
            client_view, service.port, user, db, sslmode="verify-full", sslrootcert=certs().ca_file
        )
        self.assertEqual((encrypted, who), (True, user))

    @defer.inlineCallbacks
    def test_client_offering_alpn_completes_the_handshake(self):
        """A client offering ALPN postgresql (libpq 17 and later do) completes the handshake."""
        service = self.tls_pooler()
        selected = yield self.in_thread(alpn_handshake, service.port)
        self.assertIn(selected, (None, "postgresql"))

    @defer.inlineCallbacks
    def test_verify_full_with_the_wrong_ca_fails(self):
        """sslmode=verify-full with an unrelated CA refuses the pooler's certificate."""
        user, db = self.role_and_db()
        service = self.tls_pooler()
        text = yield self.in_thread(
            refusal,
            service.port,
            user,
            db,
            sslmode="verify-full",
            sslrootcert=certs().other_ca_file,
        )
        self.assertIn("certificate verify failed", text)

    @defer.inlineCallbacks
    def test_ssl_off_require_fails(self):
        """With ssl off, sslmode=require is refused: the pooler answers SSLRequest with N."""
        user, db = self.role_and_db()
        service = self.start_pooler()
        text = yield self.in_thread(refusal, service.port, user, db, sslmode="require")
        self.assertIn("server does not support SSL", text)

    @defer.inlineCallbacks
    def test_ssl_off_prefer_falls_back_to_plaintext(self):
        """With ssl off, sslmode=prefer logs in unencrypted."""
        user, db = self.role_and_db()
        service = self.start_pooler()
        encrypted, who = yield self.in_thread(client_view, service.port, user, db, sslmode="prefer")
        self.assertEqual((encrypted, who), (False, user))

    @defer.inlineCallbacks
    def test_psql_require_and_verify_full(self):
        """psql with sslmode=require and with verify-full runs a query over TLS."""
        user, db = self.role_and_db()
        service = self.tls_pooler()
        base = f"host={LOOPBACK} port={service.port} user={user} dbname={db}"
        for extra in ("sslmode=require", f"sslmode=verify-full sslrootcert={certs().ca_file}"):
            proc = yield self.in_thread(psql, f"{base} {extra}")
            self.assertEqual(proc.returncode, 0, proc.stderr)
            lines = proc.stdout.splitlines()
            self.assertEqual(lines[0], "1", proc.stdout)
            self.assertIn("SSL connection", proc.stdout, extra)

    @defer.inlineCallbacks
    def test_plaintext_sent_with_ssl_request_is_refused(self):
        """Startup bytes sent along with SSLRequest get 08P01, never an S (CVE-2021-23214)."""
        user, db = self.role_and_db()
        service = self.tls_pooler()
        raw = yield self.in_thread(ssl_request_then_plaintext, service.port, user, db)
        self.assertNotEqual(raw[:1], b"S", raw)
        self.assertFalse(authentication_seen(raw), raw)
        fields = m.parse_fields(m.MessageReader().feed(raw)[0][1])
        self.assertEqual(fields.get("C"), "08P01", fields)
        self.assertIn("received unencrypted data after SSL request", fields.get("M", ""))
        self.assertEqual(self.server_pids(user), set())

    @defer.inlineCallbacks
    def test_plaintext_instead_of_client_hello_is_closed(self):
        """After S, a plaintext startup instead of a ClientHello closes the connection unread."""
        user, db = self.role_and_db()
        service = self.tls_pooler()
        answer, rest = yield self.in_thread(plaintext_after_s, service.port, user, db)
        self.assertEqual(answer, b"S")
        # Nothing, or a TLS alert record (content type 21): never a protocol message.
        self.assertIn(rest[:1], (b"", b"\x15"), rest)
        self.assertFalse(authentication_seen(rest), rest)
        self.assertEqual(self.server_pids(user), set())

    # -- pool_hba.conf ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_hostssl_matches_only_tls_clients(self):
        """A hostssl line lets TLS clients in; a plaintext client finds no entry (28000)."""
        user, db = self.role_and_db()
        service = self.hba_pooler([f"hostssl all {user} 127.0.0.1/32 trust"])
        port = service.port
        self.assertEqual((yield self.in_thread(raw_login, port, user, db, True)), {})
        fields = yield self.in_thread(raw_login, port, user, db, False)
        self.assertEqual(fields.get("C"), "28000", fields)
        self.assertEqual(
            fields.get("M"),
            f'no pool_hba.conf entry for host "127.0.0.1", user "{user}", '
            f'database "{db}", no encryption',
        )
        text = yield self.in_thread(refusal, port, user, db, sslmode="disable")
        self.assertIn("no pool_hba.conf entry", text)
        encrypted, _ = yield self.in_thread(client_view, port, user, db, sslmode="require")
        self.assertTrue(encrypted)

    @defer.inlineCallbacks
    def test_hostnossl_matches_only_plaintext_clients(self):
        """A hostnossl line lets plaintext clients in; a TLS client finds no entry (28000)."""
        user, db = self.role_and_db()
        service = self.hba_pooler([f"hostnossl all {user} 127.0.0.1/32 trust"])
        port = service.port
        encrypted, _ = yield self.in_thread(client_view, port, user, db, sslmode="disable")
        self.assertFalse(encrypted)
        fields = yield self.in_thread(raw_login, port, user, db, True)
        self.assertEqual(fields.get("C"), "28000", fields)
        self.assertEqual(
            fields.get("M"),
            f'no pool_hba.conf entry for host "127.0.0.1", user "{user}", '
            f'database "{db}", SSL encryption',
        )
        text = yield self.in_thread(refusal, port, user, db, sslmode="require")
        self.assertIn("no pool_hba.conf entry", text)

    def cert_pooler(self, user: str, extra_option: str = "") -> PgpoolService:
        line = f"hostssl all {user} 127.0.0.1/32 cert {extra_option}".rstrip()
        return self.hba_pooler([line], ssl_ca_cert=certs().ca_file)

    @defer.inlineCallbacks
    def test_cert_method_accepts_certificate_named_after_user(self):
        """cert: a client certificate from ssl_ca_cert whose CN is the user logs in."""
        user, db = self.role_and_db()
        service = self.cert_pooler(user)
        mine = certs().ca.issue_client(user, self.temp_dir())
        encrypted, who = yield self.in_thread(
            client_view,
            service.port,
            user,
            db,
            sslmode="require",
            sslcert=mine.cert,
            sslkey=mine.key,
        )
        self.assertEqual((encrypted, who), (True, user))
        fields = yield self.in_thread(raw_login, service.port, user, db, True, mine)
        self.assertEqual(fields, {})

    @defer.inlineCallbacks
    def test_cert_method_refuses_other_cn_and_no_certificate(self):
        """cert: a certificate for another CN, or none at all, is refused with 28000."""
        user, db = self.role_and_db()
        service = self.cert_pooler(user)
        port = service.port
        theirs = certs().ca.issue_client(unique_name("someone"), self.temp_dir())
        for cert in (theirs, None):
            fields = yield self.in_thread(raw_login, port, user, db, True, cert)
            self.assertEqual(fields.get("C"), "28000", (cert, fields))
            self.assertIn(f'certificate authentication failed for user "{user}"', fields["M"])
        text = yield self.in_thread(
            refusal, port, user, db, sslmode="require", sslcert=theirs.cert, sslkey=theirs.key
        )
        self.assertIn("certificate authentication failed", text)
        text = yield self.in_thread(refusal, port, user, db, sslmode="require")
        self.assertIn("certificate authentication failed", text)
        self.assertEqual(self.server_pids(user), set())

    @defer.inlineCallbacks
    def test_cert_method_refuses_certificate_from_another_ca(self):
        """cert: a certificate named after the user but signed by another CA fails TLS."""
        user, db = self.role_and_db()
        service = self.cert_pooler(user)
        forged = certs().other.issue_client(user, self.temp_dir())
        outcome = yield self.in_thread(raw_login, service.port, user, db, True, forged)
        self.assertIsInstance(outcome, str, "logged in with a certificate from an untrusted CA")
        self.assertIn("UNKNOWN_CA", outcome)
        text = yield self.in_thread(
            refusal,
            service.port,
            user,
            db,
            sslmode="require",
            sslcert=forged.cert,
            sslkey=forged.key,
        )
        self.assertIn("unknown ca", text)
        self.assertEqual(self.server_pids(user), set())

    @defer.inlineCallbacks
    def test_clientcert_verify_ca_needs_a_certificate(self):
        """hostssl trust clientcert=verify-ca refuses a TLS client that sent no certificate."""
        user, db = self.role_and_db()
        service = self.hba_pooler(
            [f"hostssl all {user} 127.0.0.1/32 trust clientcert=verify-ca"],
            ssl_ca_cert=certs().ca_file,
        )
        mine = certs().ca.issue_client(user, self.temp_dir())
        fields = yield self.in_thread(raw_login, service.port, user, db, True, mine)
        self.assertEqual(fields, {})
        fields = yield self.in_thread(raw_login, service.port, user, db, True, None)
        self.assertNotEqual(fields, {}, "logged in without the certificate clientcert asks for")

    @defer.inlineCallbacks
    def test_clientcert_verify_full_needs_the_users_name(self):
        """hostssl trust clientcert=verify-full refuses a certificate whose CN is not the user."""
        user, db = self.role_and_db()
        service = self.hba_pooler(
            [f"hostssl all {user} 127.0.0.1/32 trust clientcert=verify-full"],
            ssl_ca_cert=certs().ca_file,
        )
        theirs = certs().ca.issue_client(unique_name("someone"), self.temp_dir())
        fields = yield self.in_thread(raw_login, service.port, user, db, True, theirs)
        self.assertNotEqual(fields, {}, "logged in with another user's certificate")


class ServerLegTests(TLSCase):
    """TLS between the pooler and PostgreSQL (server_tls_sslmode, server_tls_ca_file)."""

    def setUp(self) -> None:
        super().setUp()
        self.plain_pg = self.pg  # the shared cluster, ssl off
        self.pg = ssl_postgres("trust")

    def server_pooler(self, pg: TempPostgres, **settings: Any) -> PgpoolService:
        return self.start_pooler(backends=(BackendNode(0, LOOPBACK, pg.port),), **settings)

    @defer.inlineCallbacks
    def check_server_leg(self, pg: TempPostgres, expected: str, **settings: Any) -> Any:
        """A plaintext client's session works and PostgreSQL reports its leg as ``expected``."""
        user, db = unique_name("u"), unique_name("d")
        pg.create_role(user)
        pg.create_database(db, owner=user)
        service = self.server_pooler(pg, **settings)
        conn = yield self.open_session(service.port, user, db, sslmode="disable")
        who = yield self.in_thread(query_on, conn, "select current_user")
        self.assertEqual(who, user)
        legs = yield self.in_thread(self.server_leg_ssl, user, pg)
        self.assertEqual(legs, [expected])

    def test_verify_full_encrypts_the_server_leg(self):
        """verify-full with the right CA: PostgreSQL sees the pooler's connection as TLS."""
        return self.check_server_leg(
            self.pg, "t", server_tls_sslmode="verify-full", server_tls_ca_file=certs().ca_file
        )

    def refuse_plaintext_for(self, user: str) -> None:
        """Make the TLS cluster refuse ``user``'s plaintext logins (a hostssl-only role)."""
        hba = os.path.join(self.pg.data_dir, "pg_hba.conf")
        with open(hba, encoding="utf-8") as handle:
            original = handle.read()

        def write(text: str) -> None:
            with open(hba, "w", encoding="utf-8") as handle:
                handle.write(text)
            self.pg.psql("select pg_reload_conf()")

        self.addCleanup(write, original)
        write(f'hostnossl all "{user}" {LOOPBACK}/32 reject\n' + original)

    @defer.inlineCallbacks
    def test_allow_retries_over_tls_only_when_plaintext_is_refused(self):
        """allow: plaintext first; a server refusing plaintext gets a second login over TLS."""
        refused, plain = unique_name("u"), unique_name("u")
        db = unique_name("d")
        for user in (refused, plain):
            self.pg.create_role(user)
        self.pg.create_database(db, owner=plain)
        self.refuse_plaintext_for(refused)
        service = self.server_pooler(self.pg, server_tls_sslmode="allow")
        for user, expected in ((refused, "t"), (plain, "f")):
            conn = yield self.open_session(service.port, user, db, sslmode="disable")
            who = yield self.in_thread(query_on, conn, "select current_user")
            self.assertEqual(who, user)
            legs = yield self.in_thread(self.server_leg_ssl, user)
            self.assertEqual(legs, [expected], user)

    @defer.inlineCallbacks
    def test_verify_full_checks_the_host_name(self):
        """verify-full to ::1, which PostgreSQL's certificate does not name, is refused."""
        if not self.pg.ipv6:
            raise SkipTest("PostgreSQL does not listen on ::1 here")
        user, db = unique_name("u"), unique_name("d")
        self.pg.create_role(user)
        self.pg.create_database(db, owner=user)
        node = BackendNode(0, "::1", self.pg.port)
        ca_file = certs().ca_file
        for mode, works in (("verify-ca", True), ("verify-full", False)):
            service = self.start_pooler(
                backends=(node,), server_tls_sslmode=mode, server_tls_ca_file=ca_file
            )
            text = yield self.in_thread(refusal, service.port, user, db, sslmode="disable")
            if works:
                self.assertEqual(text, "", mode)
            else:
                self.assertIn("mismatch", text.lower() or "logged in", mode)

    def test_verify_ca_encrypts_the_server_leg(self):
        """verify-ca with the right CA: PostgreSQL sees the pooler's connection as TLS."""
        return self.check_server_leg(
            self.pg, "t", server_tls_sslmode="verify-ca", server_tls_ca_file=certs().ca_file
        )

    def test_prefer_encrypts_when_the_server_can(self):
        """prefer (the default) against ssl on: the server leg is TLS."""
        return self.check_server_leg(self.pg, "t")

    def test_disable_stays_plaintext(self):
        """disable against ssl on: the server leg is not encrypted."""
        return self.check_server_leg(self.pg, "f", server_tls_sslmode="disable")

    def test_prefer_falls_back_when_the_server_cannot(self):
        """prefer against ssl off: the session works in plaintext."""
        return self.check_server_leg(self.plain_pg, "f", server_tls_sslmode="prefer")

    @defer.inlineCallbacks
    def check_refused(self, pg: TempPostgres, words: str, **settings: Any) -> Any:
        user, db = unique_name("u"), unique_name("d")
        pg.create_role(user)
        pg.create_database(db, owner=user)
        service = self.server_pooler(pg, **settings)
        text = yield self.in_thread(refusal, service.port, user, db, sslmode="disable")
        self.assertIn(words, text)
        self.assertEqual(self.server_pids_on(pg, user), set())

    def server_pids_on(self, pg: TempPostgres, user: str) -> set[int]:
        out = pg.psql(
            "select pid from pg_stat_activity where usename = :'u'", variables={"u": user}
        )
        return {int(line) for line in out.split()}

    def test_verify_full_with_the_wrong_ca_fails(self):
        """verify-full with an unrelated CA: the client hears the certificate was refused."""
        return self.check_refused(
            self.pg,
            "certificate",
            server_tls_sslmode="verify-full",
            server_tls_ca_file=certs().other_ca_file,
        )

    def test_verify_ca_with_the_wrong_ca_fails(self):
        """verify-ca with an unrelated CA: the client hears the certificate was refused."""
        return self.check_refused(
            self.pg,
            "certificate",
            server_tls_sslmode="verify-ca",
            server_tls_ca_file=certs().other_ca_file,
        )

    def test_require_against_plaintext_server_fails(self):
        """require against ssl off: a clear error that the server does not support TLS."""
        return self.check_refused(
            self.plain_pg, "does not support TLS", server_tls_sslmode="require"
        )


class RelayedScramTests(TLSCase):
    """A SCRAM PostgreSQL with ssl on, its exchange relayed (enable_pool_hba off) over TLS."""

    def setUp(self) -> None:
        super().setUp()
        self.pg = ssl_postgres("scram-sha-256")

    def scram_pooler(self) -> PgpoolService:
        return self.tls_pooler(
            backends=(BackendNode(0, LOOPBACK, self.pg.port),), server_tls_sslmode="require"
        )

    @defer.inlineCallbacks
    def check_login(self, client_sslmode: str, **params: str) -> Any:
        """psycopg logs in with the password; the server leg is TLS as PostgreSQL sees it."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.scram_pooler()
        conn = yield self.open_session(
            service.port, user, db, sslmode=client_sslmode, password=PASSWORD, **params
        )
        self.assertEqual(bool(conn.pgconn.ssl_in_use), client_sslmode == "require")
        who = yield self.in_thread(query_on, conn, "select current_user")
        self.assertEqual(who, user)
        legs = yield self.in_thread(self.server_leg_ssl, user)
        self.assertEqual(legs, ["t"])

    def test_plaintext_client_logs_in(self):
        """A plaintext client's relayed SCRAM login succeeds over a TLS server leg."""
        return self.check_login("disable")

    @defer.inlineCallbacks
    def test_tls_client_with_default_channel_binding_is_told_why(self):
        """Known limit: a TLS client's relayed SCRAM over a TLS server leg fails on channel binding.

        libpq over TLS, offered no -PLUS, sends gs2 flag 'y'; a TLS server that does
        offer -PLUS must refuse that as a downgrade, and the flag is covered by the
        client's proof, so no relay can change it.  README documents the ways out.
        """
        user, db = self.role_and_db(password=PASSWORD)
        service = self.scram_pooler()
        error = yield self.assertFailure(
            self.open_session(service.port, user, db, sslmode="require", password=PASSWORD),
            psycopg.OperationalError,
        )
        self.assertIn("channel binding", str(error))

    def test_tls_client_without_channel_binding_logs_in(self):
        """A TLS client with channel_binding=disable logs in over a TLS server leg."""
        return self.check_login("require", channel_binding="disable")

    @defer.inlineCallbacks
    def test_relayed_mechanisms_hide_plus(self):
        """The relayed AuthenticationSASL offers SCRAM-SHA-256 and never -PLUS, TLS or not."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.scram_pooler()
        for tls in (False, True):
            mechanisms = yield self.in_thread(sasl_mechanisms, service.port, user, db, tls)
            self.assertEqual(mechanisms, ["SCRAM-SHA-256"], f"tls={tls}")


class ReloadTests(TLSCase):
    """reload() rebuilds the clients' TLS context; a bad one keeps the running one."""

    def write_conf(self, path: str, socket_dir: str, cert: str, key: str) -> None:
        lines = [
            "listen_addresses = '127.0.0.1'",
            "port = 0",
            f"socket_dir = {quote_conf(socket_dir)}",
            f"backend_hostname0 = {quote_conf(self.pg.host)}",
            f"backend_port0 = {self.pg.port}",
            "ssl = on",
            f"ssl_cert = {quote_conf(cert)}",
            f"ssl_key = {quote_conf(key)}",
        ]
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    @defer.inlineCallbacks
    def test_reload_swaps_the_certificate(self):
        """After reload new clients get cert B, open sessions go on, a bad key changes nothing."""
        files = certs()
        user, db = self.role_and_db()
        directory = self.temp_dir()
        conf = os.path.join(directory, "pgpool.conf")
        self.write_conf(conf, directory, files.pooler.cert, files.pooler.key)
        service = PgpoolService.from_file(conf, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = service.port
        self.assertEqual((yield self.in_thread(presented_certificate, port)), files.pooler.der)
        # A raw TLS session, so that this test does not depend on the client's libpq.
        client = yield self.in_thread(tls_session, port, user, db)
        self.addCleanup(self.in_thread, client.close)

        self.write_conf(conf, directory, files.pooler_b.cert, files.pooler_b.key)
        self.assertTrue(service.reload())
        self.assertEqual((yield self.in_thread(scalar, client, "select 41 + 1")), "42")
        self.assertEqual((yield self.in_thread(presented_certificate, port)), files.pooler_b.der)
        verified = yield self.in_thread(presented_certificate, port, files.ca_file)
        self.assertEqual(verified, files.pooler_b.der)

        self.write_conf(conf, directory, files.pooler_b.cert, files.pooler.key)
        self.assertFalse(service.reload())
        self.assertEqual((yield self.in_thread(presented_certificate, port)), files.pooler_b.der)
        other = yield self.in_thread(tls_session, port, user, db)
        self.addCleanup(self.in_thread, other.close)
        self.assertEqual((yield self.in_thread(scalar, other, "select current_user")), user)
        self.assertEqual((yield self.in_thread(scalar, client, "select 2")), "2")
