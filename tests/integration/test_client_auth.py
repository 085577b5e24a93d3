"""Client authentication through an in-process pooler: pool_hba.conf, pool_passwd, reuse.

The throwaway PostgreSQL clusters here ask for passwords themselves (SCRAM-SHA-256 or md5),
so every login is two exchanges: the client's with the pooler (the first pool_hba.conf rule
that fits, checked against pool_passwd) and the pooler's with the server (answered from
pool_passwd).  Clients are libpq (psycopg and psql) and a raw protocol client that shows
what libpq hides (the SQLSTATE, which authentication requests came); the raw client's md5
is hashlib and its SCRAM is scramp, so it shares no auth code with the pooler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Generator
from typing import Any, Callable, NamedTuple, Optional

import psycopg
import scramp
from twisted.internet import defer, reactor

from pgpool_tw.config.authfiles import AuthFilesError
from pgpool_tw.config.passwd import md5_entry, scram_entry, text_entry
from pgpool_tw.config.settings import BackendNode, Config
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.service import PgpoolService
from tests.e2e.pooler import client_env, pg_bin, quote_conf
from tests.integration.harness import PoolerTestCase, sleep
from tests.support import unique_name

LOOPBACK = "127.0.0.1"
# A blank and a quote, so every client has to quote it properly.
PASSWORD = "Right pw'1"
WRONG = "Wrong pw'2"
NO_PASSFILE = "/nonexistent/pgpass"  # libpq must not find a password anywhere else

# Authentication request codes, from PostgreSQL's protocol docs.
AUTH_OK, CLEARTEXT, MD5, SASL, SASL_CONTINUE, SASL_FINAL = 0, 3, 5, 10, 11, 12
FIRST_CODE = {"md5": MD5, "scram-sha-256": SASL, "password": CLEARTEXT}


def failed(user: str) -> str:
    """PostgreSQL's words for a wrong password (and, on purpose, for an unknown user)."""
    return f'password authentication failed for user "{user}"'


# --- clients (they block: run them with in_thread) ---------------------------------


class Attempt(NamedTuple):
    """What a raw login saw."""

    requests: tuple[bytes, ...]  # bodies of the Authentication messages, in order
    error: dict[str, str]  # the ErrorResponse's fields; empty when the login succeeded
    pid: int  # BackendKeyData's pid (the server's own); 0 when refused

    @property
    def codes(self) -> tuple[int, ...]:
        return tuple(m.auth_code(body) for body in self.requests)


def _md5_answer(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode() + b"\0"


def raw_login(
    port: int, user: str, db: str, password: Optional[str], host: str = LOOPBACK
) -> Attempt:
    """Log in speaking the protocol by hand; ``password`` None hangs up at the first request.

    ``host`` may be a socket directory.  A successful login is ended with Terminate.
    """
    if host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(os.path.join(host, f".s.PGSQL.{port}"))
    else:
        sock = socket.create_connection((host, port), timeout=10)
    requests: list[bytes] = []
    scram: Optional[scramp.ScramClient] = None
    pid = 0
    with sock:
        sock.sendall(StartupMessage(params=(("user", user), ("database", db))).to_server_packet())
        reader = m.MessageReader()
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed without an error; requests {requests!r}")
            for kind, body in reader.feed(data):
                if kind == m.ERROR_RESPONSE:
                    return Attempt(tuple(requests), m.parse_fields(body), 0)
                if kind == m.BACKEND_KEY_DATA:
                    pid = m.parse_backend_key_data(body)[0]
                elif kind == m.READY_FOR_QUERY:
                    sock.sendall(m.terminate())
                    return Attempt(tuple(requests), {}, pid)
                elif kind == m.AUTHENTICATION:
                    requests.append(body)
                    code = m.auth_code(body)
                    if code == AUTH_OK:
                        continue
                    if password is None:
                        sock.sendall(m.terminate())
                        return Attempt(tuple(requests), {}, 0)
                    if code == CLEARTEXT:
                        sock.sendall(m.message(b"p", m.cstring(password)))
                    elif code == MD5:
                        sock.sendall(m.message(b"p", _md5_answer(user, password, body[4:8])))
                    elif code == SASL:
                        scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
                        first = scram.get_client_first().encode()
                        initial = b"SCRAM-SHA-256\0" + m.INT32.pack(len(first)) + first
                        sock.sendall(m.message(b"p", initial))
                    elif code == SASL_CONTINUE and scram is not None:
                        scram.set_server_first(body[4:].decode())
                        sock.sendall(m.message(b"p", scram.get_client_final().encode()))
                    elif code == SASL_FINAL and scram is not None:
                        scram.set_server_final(body[4:].decode())  # checks the signature
                    else:
                        raise AssertionError(f"unexpected authentication request {code}")


def _connect(
    port: int, user: str, db: str, password: str, host: str = LOOPBACK
) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=host,
        port=port,
        user=user,
        dbname=db,
        password=password,
        passfile=NO_PASSFILE,
        sslmode="disable",
        connect_timeout=10,
        autocommit=True,
    )


def session(port: int, user: str, db: str, password: str, host: str = LOOPBACK) -> int:
    """A psycopg session that checks who it is and returns the server pid, ending cleanly."""
    with _connect(port, user, db, password, host) as conn:
        row = conn.execute("select current_user, pg_backend_pid()").fetchone()
    assert row is not None and row[0] == user, row
    return int(row[1])


def refusal(port: int, user: str, db: str, password: str, host: str = LOOPBACK) -> str:
    """psycopg's error text for a login; '' when it logged in."""
    try:
        with _connect(port, user, db, password, host):
            return ""
    except psycopg.OperationalError as e:
        return str(e)


def psql(
    port: int, user: str, db: str, password: Optional[str], host: str = LOOPBACK
) -> subprocess.CompletedProcess[str]:
    """``psql -X -At -w -c 'select 1'`` with the password in PGPASSWORD (none if None)."""
    env = client_env(PGSSLMODE="disable", PGPASSFILE=NO_PASSFILE)
    if password is not None:
        env["PGPASSWORD"] = password
    argv = [pg_bin("psql"), "-X", "-At", "-w", "-h", host, "-p", str(port)]
    argv += ["-U", user, "-d", db, "-c", "select 1"]
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60
    )


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- the common case ----------------------------------------------------------------


class ClientAuthChecks:
    """Auth files in a temp dir, a pooler that reads them, and the tests both servers run.

    A mixin, not a TestCase, so trial does not also run these tests against a trust server.
    """

    pg: Any

    def temp_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="pgtw-auth-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def write_files(self, hba: list[str], passwd: list[str]) -> tuple[str, str]:
        """pool_hba.conf and pool_passwd (mode 0600) in a fresh temp dir."""
        directory = self.temp_dir()
        hba_path = os.path.join(directory, "pool_hba.conf")
        passwd_path = os.path.join(directory, "pool_passwd")
        with open(hba_path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(hba) + "\n")
        fd = os.open(passwd_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(passwd) + "\n")
        return hba_path, passwd_path

    def hba_pooler(self, hba: list[str], passwd: list[str], **settings: Any) -> PgpoolService:
        hba_path, passwd_path = self.write_files(hba, passwd)
        return self.start_pooler(
            enable_pool_hba=True, pool_hba_file=hba_path, pool_passwd=passwd_path, **settings
        )

    def server_secret(self, user: str) -> str:
        """The role's secret as PostgreSQL stores it (pg_authid.rolpassword)."""
        return self.pg.psql(
            "select rolpassword from pg_authid where rolname = :'u'", variables={"u": user}
        ).strip()

    def entry(self, kind: str, user: str, password: str = PASSWORD) -> str:
        """A pool_passwd line: 'md5', 'scram' (the server's own secret) or 'text'."""
        if kind == "md5":
            return md5_entry(user, password)
        if kind == "scram":
            secret = self.server_secret(user)
            self.assertTrue(secret.startswith("SCRAM-SHA-256$"), secret)
            return f"{user}:{secret}"
        if kind == "scram-generated":
            return scram_entry(user, password)
        self.assertEqual(kind, "text")
        return text_entry(user, password)

    def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout: float = 10.0
    ) -> Generator[Any, Any, None]:
        """Poll ``predicate`` in the reactor (use with ``yield from``)."""
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"timed out after {timeout:g}s waiting for {what}")
            yield sleep(0.02)

    def wait_idle(self, service: PgpoolService, count: int) -> Generator[Any, Any, None]:
        pool = service.pool
        yield from self.wait_until(lambda: pool.idle_count == count, f"{count} idle server(s)")

    def assert_wrong_refused(
        self,
        port: int,
        user: str,
        db: str,
        first_code: int,
        host: str = LOOPBACK,
        password: str = WRONG,
    ) -> Generator[Any, Any, None]:
        """Raw client and psycopg both get FATAL 28P01 in PostgreSQL's words.

        An empty ``password`` is sent by the raw client only.
        """
        attempt = yield self.in_thread(raw_login, port, user, db, password, host)
        self.assertEqual(attempt.codes[:1], (first_code,), attempt)
        self.assertNotIn(AUTH_OK, attempt.codes, attempt)
        self.assertEqual(attempt.error.get("C"), "28P01", attempt)
        self.assertEqual(attempt.error.get("M"), failed(user), attempt)
        if not password:
            return  # libpq refuses to send an empty password itself
        text = yield self.in_thread(refusal, port, user, db, password, host)
        self.assertIn(f"FATAL:  {failed(user)}", text)

    # -- item 1: one hba method with one kind of entry ----------------------------------

    def check_method(
        self, method: str, kind: str, first_code: int, cleartext: bool = False
    ) -> Generator[Any, Any, None]:
        """Right and wrong password by raw client, psycopg and psql for one rule and entry."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 {method}"],
            [self.entry(kind, user)],
            allow_clear_text_frontend_auth=cleartext,
        )
        port = service.port
        attempt = yield self.in_thread(raw_login, port, user, db, PASSWORD)
        self.assertEqual(attempt.error, {}, attempt)
        self.assertEqual(attempt.codes[0], first_code, attempt)
        self.assertTrue(attempt.pid, attempt)
        yield from self.assert_wrong_refused(port, user, db, first_code)
        pid = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertTrue(pid)
        ok = yield self.in_thread(psql, port, user, db, PASSWORD)
        self.assertEqual((ok.returncode, ok.stdout.strip()), (0, "1"), ok.stderr)
        bad = yield self.in_thread(psql, port, user, db, WRONG)
        self.assertEqual(bad.returncode, 2, bad.stdout)
        self.assertIn(f"FATAL:  {failed(user)}", bad.stderr)

    @defer.inlineCallbacks
    def test_password_rule_refused_without_cleartext(self):
        """A password rule with allow_clear_text_frontend_auth off is FATAL 28000, no prompt."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 password"], [self.entry("text", user)]
        )
        port = service.port
        attempt = yield self.in_thread(raw_login, port, user, db, PASSWORD)
        self.assertEqual(attempt.codes, ())
        self.assertEqual(attempt.error.get("C"), "28000", attempt)
        self.assertIn("allow_clear_text_frontend_auth", attempt.error.get("M", ""))
        text = yield self.in_thread(refusal, port, user, db, PASSWORD)
        self.assertIn("allow_clear_text_frontend_auth", text)
        proc = yield self.in_thread(psql, port, user, db, PASSWORD)
        self.assertEqual(proc.returncode, 2, proc.stdout)
        self.assertIn("allow_clear_text_frontend_auth", proc.stderr)

    @defer.inlineCallbacks
    def test_password_rule_text_entry(self):
        """A password rule with cleartext allowed asks for cleartext and checks a TEXT entry."""
        yield from self.check_method("password", "text", CLEARTEXT, cleartext=True)

    # -- item 2: unknown users ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_unknown_user_gets_wrong_password_message(self):
        """A user missing from pool_passwd gets the same FATAL 28P01 text as a wrong password."""
        user, db = self.role_and_db(password=PASSWORD)
        ghost = unique_name("ghost")
        for method in ("md5", "scram-sha-256", "password"):
            service = self.hba_pooler(
                [f"host all all 127.0.0.1/32 {method}"],
                [self.entry("text", user)],
                allow_clear_text_frontend_auth=True,
            )
            port = service.port
            known = yield self.in_thread(raw_login, port, user, db, WRONG)
            unknown = yield self.in_thread(raw_login, port, ghost, db, PASSWORD)
            self.assertEqual(known.error.get("C"), "28P01", (method, known))
            self.assertEqual(unknown.error.get("C"), "28P01", (method, unknown))
            self.assertEqual(unknown.error.get("M"), failed(ghost), method)
            self.assertEqual(
                known.error.get("M", "").replace(user, "?"),
                unknown.error.get("M", "").replace(ghost, "?"),
                method,
            )
            self.assertEqual(known.codes, unknown.codes, method)
            text = yield self.in_thread(refusal, port, ghost, db, PASSWORD)
            self.assertIn(f"FATAL:  {failed(ghost)}", text)
            proc = yield self.in_thread(psql, port, ghost, db, PASSWORD)
            self.assertIn(f"FATAL:  {failed(ghost)}", proc.stderr)

    # -- item 4: the matrix ---------------------------------------------------------------

    def check_matrix(self, method: str, kind: str) -> Generator[Any, Any, None]:
        """Wrong passwords are refused and never handed a server, new or pooled."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 {method}"],
            [self.entry(kind, user)],
            allow_clear_text_frontend_auth=True,
        )
        pool, port, code = service.pool, service.port, FIRST_CODE[method]
        if method == "md5" and kind == "scram":
            code = SASL  # an md5 rule with a SCRAM secret is SCRAM, as in PostgreSQL
        # No server connection yet: a wrong password is refused before one is opened.
        yield from self.assert_wrong_refused(port, user, db, code)
        self.assertEqual(self.server_pids(user), set())
        first = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertEqual(pool.reused, 0)
        yield from self.wait_idle(service, 1)
        # A pooled server connection exists: a wrong password still gets nothing.
        yield from self.assert_wrong_refused(port, user, db, code)
        bad = yield self.in_thread(psql, port, user, db, WRONG)
        self.assertIn(f"FATAL:  {failed(user)}", bad.stderr)
        self.assertEqual((pool.reused, pool.idle_count), (0, 1))
        self.assertEqual(self.server_pids(user), {first})
        second = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertEqual(pool.reused, 1)
        self.assertEqual(second, first)

    # -- item 5: every session presents the password -------------------------------------

    def check_password_each_time(self, method: str, kind: str) -> Generator[Any, Any, None]:
        """With a pooled server for the user, a client without the password is refused."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 {method}"], [self.entry(kind, user)]
        )
        pool, port = service.pool, service.port
        first = yield self.in_thread(session, port, user, db, PASSWORD)
        yield from self.wait_idle(service, 1)
        text = yield self.in_thread(refusal, port, user, db, "")
        self.assertIn("no password supplied", text)
        hung_up = yield self.in_thread(raw_login, port, user, db, None)
        self.assertEqual(hung_up.codes, (FIRST_CODE[method],), hung_up)
        yield from self.assert_wrong_refused(port, user, db, FIRST_CODE[method], password="")
        self.assertEqual((pool.reused, pool.idle_count), (0, 1))
        second = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertEqual((pool.reused, second), (1, first))
        yield from self.wait_idle(service, 1)
        text = yield self.in_thread(refusal, port, user, db, "")
        self.assertIn("no password supplied", text)
        third = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertEqual((pool.reused, third), (2, first))

    # -- item 6: trust answered from pool_passwd ------------------------------------------

    @defer.inlineCallbacks
    def test_trust_rule_text_entry_answers_server_and_reuses(self):
        """Under trust the client gives no password, pool_passwd answers the server, reuse works."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 trust"], [self.entry("text", user)]
        )
        pool, port = service.pool, service.port
        # The server itself asks for a password: libpq without one cannot log in to it.
        direct = yield self.in_thread(refusal, self.pg.port, user, db, "")
        self.assertIn("no password supplied", direct)
        attempt = yield self.in_thread(raw_login, port, user, db, None)
        self.assertEqual(attempt.codes, (AUTH_OK,), attempt)
        self.assertEqual(attempt.error, {}, attempt)
        yield from self.wait_idle(service, 1)
        first = attempt.pid
        second = yield self.in_thread(session, port, user, db, "")
        self.assertEqual((pool.reused, second), (1, first))
        yield from self.wait_idle(service, 1)
        proc = yield self.in_thread(psql, port, user, db, None)
        self.assertEqual((proc.returncode, proc.stdout.strip()), (0, "1"), proc.stderr)

    # -- item 3: which rule fits ---------------------------------------------------------

    @defer.inlineCallbacks
    def test_reject_rule(self):
        """A reject rule refuses with FATAL 28000 in PostgreSQL's words, before any password."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 reject", "host all all 127.0.0.1/32 trust"],
            [self.entry("text", user)],
        )
        attempt = yield self.in_thread(raw_login, service.port, user, db, PASSWORD)
        wanted = (
            f'pool_hba.conf rejects connection for host "127.0.0.1", user "{user}", '
            f'database "{db}", no encryption'
        )
        self.assertEqual(attempt.codes, ())
        self.assertEqual((attempt.error.get("C"), attempt.error.get("M")), ("28000", wanted))
        text = yield self.in_thread(refusal, service.port, user, db, PASSWORD)
        self.assertIn(wanted, text)
        self.assertEqual(self.server_pids(user), set())

    @defer.inlineCallbacks
    def test_no_matching_rule(self):
        """No fitting rule is FATAL 28000 'no pool_hba.conf entry for host …' exactly."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            ["host all someone_else 127.0.0.1/32 trust", f"local all {user} trust"],
            [self.entry("text", user)],
        )
        attempt = yield self.in_thread(raw_login, service.port, user, db, PASSWORD)
        wanted = (
            f'no pool_hba.conf entry for host "127.0.0.1", user "{user}", database "{db}", '
            "no encryption"
        )
        self.assertEqual(attempt.codes, ())
        self.assertEqual((attempt.error.get("C"), attempt.error.get("M")), ("28000", wanted))
        proc = yield self.in_thread(psql, service.port, user, db, PASSWORD)
        self.assertEqual(proc.returncode, 2, proc.stdout)
        self.assertIn(f"FATAL:  {wanted}", proc.stderr)

    @defer.inlineCallbacks
    def test_cidr_rules(self):
        """127.0.0.0/8 fits a loopback client and 10.0.0.0/8 does not."""
        user, db = self.role_and_db(password=PASSWORD)
        other, other_db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [
                f"host all {user} 10.0.0.0/8 reject",
                f"host all {user} 127.0.0.0/8 md5",
                f"host all {other} 10.0.0.0 255.0.0.0 trust",
            ],
            [self.entry("text", user), self.entry("text", other)],
        )
        port = service.port
        attempt = yield self.in_thread(raw_login, port, user, db, PASSWORD)
        self.assertEqual((attempt.codes[0], attempt.error), (MD5, {}), attempt)
        yield from self.assert_wrong_refused(port, user, db, MD5)
        refused = yield self.in_thread(raw_login, port, other, other_db, PASSWORD)
        self.assertEqual(refused.error.get("C"), "28000", refused)
        self.assertTrue(refused.error.get("M", "").startswith("no pool_hba.conf entry"), refused)

    @defer.inlineCallbacks
    def test_local_rules_for_unix_socket(self):
        """local rules serve unix-socket clients only; host rules serve TCP clients only."""
        user, db = self.role_and_db(password=PASSWORD)
        other, other_db = self.role_and_db(password=PASSWORD)
        stranger, stranger_db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [
                f"local all {user} trust",
                f"local all {other} md5",
                f"host all {stranger} 127.0.0.1/32 trust",
                "host all all 127.0.0.1/32 reject",
            ],
            [self.entry("text", name) for name in (user, other, stranger)],
        )
        port, unix = service.port, service.config.socket_dirs[0]
        self.assertTrue(os.path.exists(service.socket_paths[0]))
        trusted = yield self.in_thread(raw_login, port, user, db, None, unix)
        self.assertEqual((trusted.codes, trusted.error), ((AUTH_OK,), {}), trusted)
        pid = yield self.in_thread(session, port, user, db, "", unix)
        self.assertTrue(pid)
        over_tcp = yield self.in_thread(raw_login, port, user, db, PASSWORD)
        self.assertTrue(over_tcp.error.get("M", "").startswith("pool_hba.conf rejects"), over_tcp)
        attempt = yield self.in_thread(raw_login, port, other, other_db, PASSWORD, unix)
        self.assertEqual((attempt.codes[0], attempt.error), (MD5, {}), attempt)
        yield from self.assert_wrong_refused(port, other, other_db, MD5, host=unix)
        proc = yield self.in_thread(psql, port, other, other_db, PASSWORD, unix)
        self.assertEqual((proc.returncode, proc.stdout.strip()), (0, "1"), proc.stderr)
        no_rule = yield self.in_thread(raw_login, port, stranger, stranger_db, None, unix)
        wanted = (
            f'no pool_hba.conf entry for host "[local]", user "{stranger}", '
            f'database "{stranger_db}", no encryption'
        )
        self.assertEqual((no_rule.error.get("C"), no_rule.error.get("M")), ("28000", wanted))

    @defer.inlineCallbacks
    def test_sameuser_database(self):
        """sameuser fits the database named like the user, and no other."""
        user, db = self.role_and_db(password=PASSWORD)
        self.pg.create_database(user, owner=user)
        service = self.hba_pooler(
            ["host sameuser all 127.0.0.1/32 md5"], [self.entry("text", user)]
        )
        pid = yield self.in_thread(session, service.port, user, user, PASSWORD)
        self.assertTrue(pid)
        attempt = yield self.in_thread(raw_login, service.port, user, db, PASSWORD)
        wanted = (
            f'no pool_hba.conf entry for host "127.0.0.1", user "{user}", database "{db}", '
            "no encryption"
        )
        self.assertEqual((attempt.error.get("C"), attempt.error.get("M")), ("28000", wanted))

    @defer.inlineCallbacks
    def test_ipv6_loopback(self):
        """A pooler on ::1 matches ::1/128 rules, not 127.0.0.1/32, and names the host ::1."""
        if not _ipv6_loopback():
            self.skipTest("IPv6 loopback is not available")
        user, db = self.role_and_db(password=PASSWORD)
        other, other_db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [
                f"host all {user} 127.0.0.1/32 reject",
                f"host all {user} ::1/128 md5",
                f"host all {other} 127.0.0.1/32 trust",
            ],
            [self.entry("text", user), self.entry("text", other)],
            listen_addresses=("::1",),
        )
        port = service.port
        attempt = yield self.in_thread(raw_login, port, user, db, PASSWORD, "::1")
        self.assertEqual((attempt.codes[0], attempt.error), (MD5, {}), attempt)
        pid = yield self.in_thread(session, port, user, db, PASSWORD, "::1")
        self.assertTrue(pid)
        yield from self.assert_wrong_refused(port, user, db, MD5, host="::1")
        refused = yield self.in_thread(raw_login, port, other, other_db, None, "::1")
        wanted = (
            f'no pool_hba.conf entry for host "::1", user "{other}", database "{other_db}", '
            "no encryption"
        )
        self.assertEqual((refused.error.get("C"), refused.error.get("M")), ("28000", wanted))


def _add_matrix(cls: type, combinations: list[tuple[str, str]]) -> None:
    """One test per (hba method, pool_passwd entry) that can log in at all."""
    for method, kind in combinations:

        @defer.inlineCallbacks
        def test(self: Any, method: str = method, kind: str = kind) -> Any:
            yield from self.check_matrix(method, kind)

        name = f"test_matrix_{method.replace('-', '_')}_rule_{kind}_entry"
        test.__name__ = name
        test.__doc__ = (
            f"hba {method} + {kind} entry: wrong passwords get 28P01 and no server, "
            "new or pooled; right ones reuse it."
        )
        setattr(cls, name, test)


class ScramServerTests(ClientAuthChecks, PoolerTestCase):
    """The server asks for SCRAM-SHA-256 and holds SCRAM secrets."""

    auth_method = "scram-sha-256"

    @defer.inlineCallbacks
    def test_md5_rule_scram_entry_becomes_scram(self):
        """An md5 rule with a SCRAM entry runs SCRAM; right and wrong passwords, three clients."""
        yield from self.check_method("md5", "scram", SASL)

    @defer.inlineCallbacks
    def test_scram_rule_scram_entry(self):
        """A scram-sha-256 rule with the server's SCRAM secret; right and wrong passwords."""
        yield from self.check_method("scram-sha-256", "scram", SASL)

    @defer.inlineCallbacks
    def test_scram_rule_text_entry(self):
        """A scram-sha-256 rule with a TEXT entry; the TEXT entry answers the SCRAM server."""
        yield from self.check_method("scram-sha-256", "text", SASL)

    @defer.inlineCallbacks
    def test_generated_scram_entry_names_the_salt(self):
        """A SCRAM entry made apart from the server's secret fails clearly, naming the salt."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 scram-sha-256"],
            [self.entry("scram-generated", user)],
        )
        attempt = yield self.in_thread(raw_login, service.port, user, db, PASSWORD)
        # The client's proof was good (the pooler sent SASLFinal), the server login was not;
        # like PostgreSQL's own post-authentication errors, the FATAL may follow
        # AuthenticationOk.
        self.assertEqual(attempt.codes[:3], (SASL, SASL_CONTINUE, SASL_FINAL), attempt)
        self.assertEqual(attempt.error.get("C"), "28000", attempt)
        message = attempt.error.get("M", "")
        self.assertTrue(message.startswith("the pooler cannot log in to the server"), message)
        self.assertIn("salt", message)
        text = yield self.in_thread(refusal, service.port, user, db, PASSWORD)
        self.assertIn("salt", text)

    @defer.inlineCallbacks
    def test_md5_entry_cannot_serve_scram_server(self):
        """An md5 entry logs the client in but cannot answer a SCRAM server: a clear 28000."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler([f"host all {user} 127.0.0.1/32 md5"], [self.entry("md5", user)])
        attempt = yield self.in_thread(raw_login, service.port, user, db, PASSWORD)
        self.assertEqual(attempt.codes[:1], (MD5,), attempt)
        self.assertEqual(attempt.error.get("C"), "28000", attempt)
        self.assertIn("SCRAM", attempt.error.get("M", ""))
        self.assertIn("md5 secret", attempt.error.get("M", ""))

    @defer.inlineCallbacks
    def test_unknown_user_same_flow_as_scram_users(self):
        """Under an md5 rule where users have SCRAM entries, an unknown user also sees SCRAM."""
        user, db = self.role_and_db(password=PASSWORD)
        ghost = unique_name("ghost")
        service = self.hba_pooler(["host all all 127.0.0.1/32 md5"], [self.entry("scram", user)])
        known = yield self.in_thread(raw_login, service.port, user, db, WRONG)
        unknown = yield self.in_thread(raw_login, service.port, ghost, db, WRONG)
        self.assertEqual(known.error.get("C"), "28P01", known)
        self.assertEqual(unknown.error.get("C"), "28P01", unknown)
        # A different flow would tell a prober which user names exist.  PostgreSQL picks
        # the unknown user's exchange from password_encryption for the same reason.
        self.assertEqual(
            unknown.codes,
            known.codes,
            "an unknown user gets different authentication requests than a known one",
        )

    @defer.inlineCallbacks
    def test_scram_rule_password_each_session(self):
        """Each login presents the password again, though a pooled server is waiting."""
        yield from self.check_password_each_time("scram-sha-256", "scram")

    @defer.inlineCallbacks
    def test_pool_hba_off_relays_and_never_reuses(self):
        """With enable_pool_hba off the server's SCRAM is relayed and nothing is pooled."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.start_pooler()
        pool, port = service.pool, service.port
        wrong = yield self.in_thread(raw_login, port, user, db, WRONG)
        # The server's own exchange and words, relayed.
        self.assertEqual(wrong.codes, (SASL, SASL_CONTINUE), wrong)
        self.assertEqual((wrong.error.get("C"), wrong.error.get("M")), ("28P01", failed(user)))
        text = yield self.in_thread(refusal, port, user, db, WRONG)
        self.assertIn(f"FATAL:  {failed(user)}", text)
        first = yield self.in_thread(session, port, user, db, PASSWORD)
        yield from self.wait_until(lambda: pool.discarded >= 1, "the server to be discarded")
        self.assertEqual(pool.idle_count, 0)
        second = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertNotEqual(second, first)
        self.assertEqual(pool.reused, 0)
        yield from self.wait_until(lambda: pool.discarded >= 2, "the server to be discarded")
        self.assertEqual(pool.idle_count, 0)


_add_matrix(
    ScramServerTests,
    [
        (method, kind)
        for method in ("md5", "scram-sha-256", "password")
        for kind in ("scram", "text")
    ],
)


class Md5ServerTests(ClientAuthChecks, PoolerTestCase):
    """The server asks for md5 and holds md5 secrets."""

    auth_method = "md5"

    @defer.inlineCallbacks
    def test_md5_rule_md5_entry(self):
        """An md5 rule with the md5 entry; right and wrong passwords, three clients."""
        yield from self.check_method("md5", "md5", MD5)

    @defer.inlineCallbacks
    def test_md5_rule_text_entry(self):
        """An md5 rule with a TEXT entry; right and wrong passwords, three clients."""
        yield from self.check_method("md5", "text", MD5)

    @defer.inlineCallbacks
    def test_md5_salt_fresh_each_login(self):
        """Every md5 challenge carries a new 4-byte salt."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler([f"host all {user} 127.0.0.1/32 md5"], [self.entry("md5", user)])
        salts = []
        for _ in range(4):
            attempt = yield self.in_thread(raw_login, service.port, user, db, None)
            self.assertEqual(attempt.codes, (MD5,), attempt)
            salts.append(attempt.requests[0][4:])
        self.assertEqual([len(salt) for salt in salts], [4] * 4)
        self.assertEqual(len(set(salts)), 4, salts)

    @defer.inlineCallbacks
    def test_scram_rule_md5_entry_refused(self):
        """A scram-sha-256 rule cannot use an md5 secret: even the right password gets 28P01."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 scram-sha-256"], [self.entry("md5", user)]
        )
        attempt = yield self.in_thread(raw_login, service.port, user, db, PASSWORD)
        self.assertEqual(attempt.codes, (SASL, SASL_CONTINUE), attempt)
        self.assertEqual((attempt.error.get("C"), attempt.error.get("M")), ("28P01", failed(user)))
        self.assertEqual(self.server_pids(user), set())

    @defer.inlineCallbacks
    def test_scram_entry_cannot_serve_md5_server(self):
        """A SCRAM entry logs the client in but cannot answer an md5 server: a clear 28000."""
        user, db = self.role_and_db(password=PASSWORD)
        service = self.hba_pooler(
            [f"host all {user} 127.0.0.1/32 scram-sha-256"],
            [self.entry("scram-generated", user)],
        )
        attempt = yield self.in_thread(raw_login, service.port, user, db, PASSWORD)
        self.assertEqual(attempt.codes[:3], (SASL, SASL_CONTINUE, SASL_FINAL), attempt)
        self.assertEqual(attempt.error.get("C"), "28000", attempt)
        message = attempt.error.get("M", "")
        self.assertTrue(message.startswith("the pooler cannot log in to the server"), message)
        self.assertIn("md5", message)

    @defer.inlineCallbacks
    def test_md5_rule_password_each_session(self):
        """Each login presents the password again, though a pooled server is waiting."""
        yield from self.check_password_each_time("md5", "md5")

    # -- item 8: bad files ----------------------------------------------------------------

    def _config(self, hba_path: str, passwd_path: str) -> Config:
        return Config(
            listen_addresses=(LOOPBACK,),
            port=0,
            socket_dirs=(self.temp_dir(),),
            logdir=self.temp_dir(),
            backends=(BackendNode(0, self.pg.host, self.pg.port),),
            enable_pool_hba=True,
            pool_hba_file=hba_path,
            pool_passwd=passwd_path,
        )

    def test_bad_files_refuse_start(self):
        """A bad pool_hba.conf or pool_passwd line refuses the start with file:line."""
        hba_path, passwd_path = self.write_files(
            ["host all all 127.0.0.1/32 md5", "host all all 127.0.0.1/32 kerberos"],
            [md5_entry("alice", PASSWORD)],
        )
        config = self._config(hba_path, passwd_path)
        with self.assertRaises(AuthFilesError) as caught:
            PgpoolService(config, reactor)
        self.assertTrue(str(caught.exception).startswith(f"{hba_path}:2: "), caught.exception)
        self.assertIn("kerberos", str(caught.exception))
        good_hba, bad_passwd = self.write_files(
            ["host all all 127.0.0.1/32 md5"], [md5_entry("alice", PASSWORD), "bob:md5abc"]
        )
        with self.assertRaises(AuthFilesError) as caught:
            PgpoolService(
                dataclasses.replace(config, pool_hba_file=good_hba, pool_passwd=bad_passwd), reactor
            )
        self.assertTrue(str(caught.exception).startswith(f"{bad_passwd}:2: "), caught.exception)
        self.assertNotIn(md5_entry("alice", PASSWORD).partition(":")[2], str(caught.exception))

    @defer.inlineCallbacks
    def test_reload_with_bad_hba_keeps_old_rules(self):
        """A reload that meets a bad pool_hba.conf keeps the old rules; a good one applies."""
        user, db = self.role_and_db(password=PASSWORD)
        directory = self.temp_dir()
        hba_path = os.path.join(directory, "pool_hba.conf")
        conf_path = os.path.join(directory, "pgpool.conf")
        with open(hba_path, "w", encoding="utf-8") as handle:
            handle.write(f"host all {user} 127.0.0.1/32 md5\n")
        fd = os.open(os.path.join(directory, "pool_passwd"), os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(md5_entry(user, PASSWORD) + "\n")
        settings = {
            "listen_addresses": quote_conf(LOOPBACK),
            "port": "0",
            "socket_dir": quote_conf(directory),
            "backend_hostname0": quote_conf(self.pg.host),
            "backend_port0": str(self.pg.port),
            "enable_pool_hba": "on",
            "pool_hba_file": quote_conf("pool_hba.conf"),
            "pool_passwd": quote_conf("pool_passwd"),
        }
        with open(conf_path, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name} = {value}\n" for name, value in settings.items()))
        service = PgpoolService.from_file(conf_path, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = service.port
        before = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertTrue(before)
        with open(hba_path, "w", encoding="utf-8") as handle:
            handle.write(f"host all {user} 127.0.0.1/32 reject\nhost all all nowhere md5\n")
        self.assertFalse(service.reload())
        after = yield self.in_thread(session, port, user, db, PASSWORD)
        self.assertTrue(after)
        yield from self.assert_wrong_refused(port, user, db, MD5)
        with open(hba_path, "w", encoding="utf-8") as handle:
            handle.write(f"host all {user} 127.0.0.1/32 reject\n")
        self.assertTrue(service.reload())
        attempt = yield self.in_thread(raw_login, port, user, db, PASSWORD)
        self.assertEqual(attempt.error.get("C"), "28000", attempt)
        self.assertTrue(attempt.error.get("M", "").startswith("pool_hba.conf rejects"), attempt)


_add_matrix(
    Md5ServerTests,
    [("md5", "md5"), ("password", "md5"), ("md5", "text"), ("scram-sha-256", "text")]
    + [("password", "text")],
)
