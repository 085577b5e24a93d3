"""``pgpool-tw-passwd`` as an operator runs it, and a real ``twistd -n pgpool`` using its file.

The tool runs as a subprocess from the venv's bin with the password on stdin; the pooler
reads the pool_passwd it wrote (and a pool_hba.conf beside it) and psql logs in through it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.passwd import md5_entry, parse_secret
from pgpool_tw.protocol.credentials import ScramSecret, scram_keys
from pgpool_tw_dev.devdb import TempPostgres
from tests.e2e.pooler import PoolerProcess, client_env, make_temp_dir
from tests.support import shared_postgres, skip_unless_postgres, unique_name

TOOL = os.path.join(os.path.dirname(sys.executable), "pgpool-tw-passwd")
PASSWORD = "Tool pw'7 x"
WRONG = "not the password"


def failed(user: str) -> str:
    return f'FATAL:  password authentication failed for user "{user}"'


class PasswdToolTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.dir = make_temp_dir(self, "pgtw-passwd-")
        self.passwd = os.path.join(self.dir, "pool_passwd")
        self.hba = os.path.join(self.dir, "pool_hba.conf")

    def tool(self, form: str, user: str, password: str = PASSWORD) -> str:
        """Run ``pgpool-tw-passwd -f FILE --FORM --stdin USER``; its stdout (it must succeed)."""
        proc = subprocess.run(
            [TOOL, "-f", self.passwd, f"--{form}", "--stdin", user],
            input=password + "\n",
            capture_output=True,
            text=True,
            env=client_env(),
            timeout=60,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertNotIn(password, proc.stdout)
        self.assertNotIn(password, proc.stderr)
        self.assertIn(f'"{user}"', proc.stdout)
        return proc.stdout

    def entries(self) -> dict[str, str]:
        with open(self.passwd, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        return dict(line.split(":", 1) for line in lines if line)

    def pooler(self, pg: TempPostgres, hba: list[str], cleartext: bool = False) -> PoolerProcess:
        with open(self.hba, "w", encoding="utf-8") as handle:
            handle.write("\n".join(hba) + "\n")
        settings = {
            "enable_pool_hba": "on",
            "pool_hba_file": self.hba,
            "pool_passwd": self.passwd,
            "allow_clear_text_frontend_auth": "on" if cleartext else "off",
        }
        return PoolerProcess(self, pg, settings=dict(settings)).start()

    def role_and_db(self, pg: TempPostgres) -> tuple[str, str]:
        user, db = unique_name("tool_u"), unique_name("tool_d")
        pg.create_role(user, PASSWORD)
        pg.create_database(db, owner=user)
        return user, db

    def assert_logs_in(self, pooler: PoolerProcess, user: str, db: str) -> None:
        """psql with PGPASSWORD logs in with the password and is refused with another."""
        ok = pooler.psql_ok(user, db, "select current_user", env={"PGPASSWORD": PASSWORD})
        self.assertEqual(ok, user)
        bad = pooler.psql(user, db, "select 1", env={"PGPASSWORD": WRONG})
        self.assertNotEqual(bad.returncode, 0, bad.stdout)
        self.assertIn(failed(user), bad.stderr)

    def test_tool_writes_each_form(self) -> None:
        """md5, scram and text entries: right secrets, mode 0600, password never printed."""
        self.tool("md5", "alice")
        self.tool("scram", "bob")
        self.tool("text", "carol")
        self.assertEqual(stat.S_IMODE(os.stat(self.passwd).st_mode), 0o600)
        entries = self.entries()
        self.assertEqual(f"alice:{entries['alice']}", md5_entry("alice", PASSWORD))
        self.assertEqual(entries["carol"], "TEXT" + PASSWORD)
        secret = parse_secret(entries["bob"])
        assert isinstance(secret, ScramSecret)
        _, stored_key, server_key = scram_keys(PASSWORD, secret.salt, secret.iterations)
        self.assertEqual((secret.stored_key, secret.server_key), (stored_key, server_key))
        # Replacing an entry keeps one line for the user.
        self.tool("md5", "alice", "another pw")
        entries = self.entries()
        self.assertEqual(f"alice:{entries['alice']}", md5_entry("alice", "another pw"))
        self.assertEqual(sorted(entries), ["alice", "bob", "carol"])

    def test_pooler_logs_in_tool_users(self) -> None:
        """Users the tool added log in through the pooler with psql; wrong passwords do not."""
        pg = shared_postgres()  # trust: only the pooler checks passwords
        users = {form: self.role_and_db(pg) for form in ("md5", "scram", "text")}
        for form, (user, _) in users.items():
            self.tool(form, user)
        pooler = self.pooler(
            pg,
            [
                f"host all {users['md5'][0]} 127.0.0.1/32 md5",
                f"host all {users['scram'][0]} 127.0.0.1/32 scram-sha-256",
                f"host all {users['text'][0]} 127.0.0.1/32 password",
            ],
            cleartext=True,
        )
        for user, db in users.values():
            self.assert_logs_in(pooler, user, db)
        self.assertNotIn(PASSWORD, pooler.log_text())

    def test_tool_entries_answer_password_servers(self) -> None:
        """An md5 entry answers an md5 server, a text entry a SCRAM server, for psql."""
        md5_pg = shared_postgres("md5")
        user, db = self.role_and_db(md5_pg)
        self.tool("md5", user)
        self.assert_logs_in(self.pooler(md5_pg, [f"host all {user} 127.0.0.1/32 md5"]), user, db)
        scram_pg = shared_postgres("scram-sha-256")
        user, db = self.role_and_db(scram_pg)
        self.tool("text", user)
        pooler = self.pooler(scram_pg, [f"host all {user} 127.0.0.1/32 scram-sha-256"])
        self.assert_logs_in(pooler, user, db)
        self.assertNotIn(PASSWORD, pooler.log_text())
