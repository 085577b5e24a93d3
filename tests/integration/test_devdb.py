"""Tests for pgpool_tw_dev.devdb: the throwaway PostgreSQL the other tests stand on."""

from __future__ import annotations

import os
import socket

import psycopg
from psycopg.conninfo import conninfo_to_dict
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pgpool_tw_dev.devdb import TempPostgres, find_pg_bindir, free_port
from tests.support import shared_postgres, skip_unless_postgres, unique_name

# A name that would end the statement and run another one if it were pasted into SQL.
HOSTILE = 'x"; DROP ROLE postgres; --'
HOSTILE_PASSWORD = "p'w\\ \";:pw -- $$"


def _query(dsn: str, sql: str) -> tuple[object, ...]:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


class HelpersTests(SynchronousTestCase):
    def test_find_pg_bindir(self) -> None:
        """find_pg_bindir returns a directory holding initdb, pg_ctl and postgres."""
        skip_unless_postgres()
        bindir = find_pg_bindir()
        for name in ("initdb", "pg_ctl", "postgres"):
            self.assertTrue(os.access(os.path.join(bindir, name), os.X_OK), name)

    def test_free_port_is_bindable(self) -> None:
        """free_port returns a port that can be bound on 127.0.0.1."""
        port = free_port()
        self.assertTrue(0 < port < 65536)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))

    def test_dsn_quotes_values(self) -> None:
        """dsn() quotes values so libpq reads back exactly what was given."""
        pg = TempPostgres()
        pg.port = 5999
        parsed = conninfo_to_dict(pg.dsn(user=HOSTILE, dbname="a b", password=HOSTILE_PASSWORD))
        self.assertEqual(
            parsed,
            {
                "host": "127.0.0.1",
                "port": "5999",
                "user": HOSTILE,
                "dbname": "a b",
                "password": HOSTILE_PASSWORD,
            },
        )

    def test_unknown_auth_method_rejected(self) -> None:
        """TempPostgres refuses an auth method it does not know."""
        self.assertRaises(ValueError, TempPostgres, auth_method="ident")

    def test_unique_name(self) -> None:
        """unique_name gives distinct lowercase identifier-safe names with the prefix."""
        names = {unique_name("U") for _ in range(100)}
        self.assertEqual(len(names), 100)
        for name in names:
            self.assertTrue(name.startswith("u_"))
            self.assertTrue(name.isidentifier() and name == name.lower(), name)


class TrustTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres("trust")

    def test_tcp_connection_with_trust(self) -> None:
        """With trust, psycopg connects over TCP to 127.0.0.1 without a password."""
        user, addr = _query(self.pg.dsn(), "SELECT current_user, host(inet_server_addr())")
        self.assertEqual((user, addr), ("postgres", "127.0.0.1"))

    def test_ipv6_loopback(self) -> None:
        """When ::1 works here, the server also accepts connections on it."""
        if not self.pg.ipv6:
            raise SkipTest("no IPv6 loopback on this machine")
        (addr,) = _query(self.pg.dsn(host="::1"), "SELECT host(inet_server_addr())")
        self.assertEqual(addr, "::1")

    def test_unix_socket(self) -> None:
        """The server listens in its private socket dir."""
        (port,) = _query(self.pg.dsn(host=self.pg.socket_dir), "SHOW port")
        self.assertEqual(port, str(self.pg.port))

    def test_throwaway_settings(self) -> None:
        """The cluster runs with fsync off and max_connections 300."""
        out = self.pg.psql("SHOW fsync; SHOW synchronous_commit; SHOW max_connections;")
        self.assertEqual(out.split(), ["off", "off", "300"])

    def test_psql_error_raises(self) -> None:
        """psql() raises RuntimeError carrying the server's error."""
        e = self.assertRaises(RuntimeError, self.pg.psql, "SELECT * FROM no_such_table;")
        self.assertIn("no_such_table", str(e))

    def test_hostile_role_name_is_quoted(self) -> None:
        """create_role stores a name with a quote and a semicolon verbatim."""
        name = HOSTILE + unique_name("r")
        self.pg.create_role(name, superuser=True)
        out = self.pg.psql(
            "SELECT rolname, rolsuper, rolcanlogin FROM pg_roles WHERE rolname = :'n';",
            variables={"n": name},
        )
        self.assertEqual(out, f"{name}|t|t\n")
        self.assertEqual(
            self.pg.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres';"), "1\n"
        )

    def test_hostile_database_name_is_quoted(self) -> None:
        """create_database stores a hostile name verbatim, with a hostile owner, and connects."""
        owner = HOSTILE + unique_name("o")
        dbname = HOSTILE + unique_name("d")
        self.pg.create_role(owner)
        self.pg.create_database(dbname, owner=owner)
        row = _query(
            self.pg.dsn(user=owner, dbname=dbname),
            "SELECT current_database(), pg_get_userbyid(datdba) FROM pg_database"
            " WHERE datname = current_database()",
        )
        self.assertEqual(row, (dbname, owner))


class PasswordTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()

    def test_scram_password_accepted(self) -> None:
        """With scram-sha-256, a role connects with its password, stored as a SCRAM verifier."""
        pg = shared_postgres("scram-sha-256")
        name = unique_name("u")
        pg.create_role(name, password="secret")
        (user,) = _query(pg.dsn(user=name, password="secret"), "SELECT current_user")
        self.assertEqual(user, name)
        stored = pg.psql(
            "SELECT rolpassword FROM pg_authid WHERE rolname = :'n';", variables={"n": name}
        )
        self.assertTrue(stored.startswith("SCRAM-SHA-256$"), stored)

    def test_scram_wrong_password_refused(self) -> None:
        """With scram-sha-256, a wrong password is refused."""
        pg = shared_postgres("scram-sha-256")
        name = unique_name("u")
        pg.create_role(name, password="secret")
        self.assertRaises(
            psycopg.OperationalError, psycopg.connect, pg.dsn(user=name, password="wrong")
        )

    def test_hostile_password_is_quoted(self) -> None:
        """create_role sets a password with quotes and backslashes verbatim."""
        pg = shared_postgres("scram-sha-256")
        name = HOSTILE + unique_name("p")
        pg.create_role(name, password=HOSTILE_PASSWORD)
        (user,) = _query(pg.dsn(user=name, password=HOSTILE_PASSWORD), "SELECT current_user")
        self.assertEqual(user, name)

    def test_md5_cluster_stores_md5(self) -> None:
        """With md5, passwords are stored as md5 hashes and a role logs in with one."""
        pg = shared_postgres("md5")
        name = unique_name("u")
        pg.create_role(name, password="secret")
        stored = pg.psql(
            "SELECT rolpassword FROM pg_authid WHERE rolname = :'n';", variables={"n": name}
        )
        self.assertTrue(stored.startswith("md5"), stored)
        (user,) = _query(pg.dsn(user=name, password="secret"), "SELECT current_user")
        self.assertEqual(user, name)


class LifecycleTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()

    def test_stop_refuses_connections_and_removes_dir(self) -> None:
        """After stop() the port refuses connections, the dir is gone, stop() again is a no-op."""
        pg = TempPostgres(settings={"application_name": "devdb test"})
        self.addCleanup(pg.stop)
        with pg:
            (name,) = _query(pg.dsn(), "SHOW application_name")
            self.assertEqual(name, "devdb test")
            temp_dir, port, pid = pg.temp_dir, pg.port, pg.pid
            self.assertTrue(os.path.isdir(temp_dir))
            self.assertIsNotNone(pid)
        self.assertRaises(
            psycopg.OperationalError, psycopg.connect, pg.dsn(port=port), connect_timeout=5
        )
        self.assertFalse(os.path.exists(temp_dir))
        self.assertIsNone(pg.pid)
        pg.stop()

    def test_start_failure_reports_server_log(self) -> None:
        """A server that cannot start raises RuntimeError with the server log, and cleans up."""
        pg = TempPostgres(settings={"shared_buffers": "not a size"})
        self.addCleanup(pg.stop)
        e = self.assertRaises(RuntimeError, pg.start)
        self.assertIn("shared_buffers", str(e))
        self.assertEqual(pg.temp_dir, "")
