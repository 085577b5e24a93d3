"""``log_destination = 'jsonlog'`` under a real ``twistd -n pgpool``: twistd's own output
(stdout here) is JSON lines, and psql's session is logged in them."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.pooler import PoolerProcess
from tests.support import shared_postgres, skip_unless_postgres, unique_name


class JsonLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()
        self.role = unique_name("e2e_u")
        self.db = unique_name("e2e_db")
        self.pg.create_role(self.role)
        self.pg.create_database(self.db, owner=self.role)

    def test_twistd_writes_json_lines(self) -> None:
        """Every line twistd writes parses as JSON, twistd's own start-up lines included;
        psql's statement and its session's end are there with their fields."""
        pooler = PoolerProcess(
            self,
            self.pg,
            settings={
                "log_destination": "jsonlog",
                "log_disconnections": "on",
                "log_statement": "on",
            },
        ).start()
        self.assertEqual(pooler.psql_ok(self.role, self.db, "select 42 as answer"), "42")
        pooler.wait_for_log('"disconnection: ')
        pooler.stop()
        lines = pooler.log_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        self.assertTrue(any("twistd" in r["message"] for r in records), lines[:3])
        statement = [r for r in records if r.get("statement") == "select 42 as answer"]
        self.assertEqual(len(statement), 1, lines)
        [end] = [r for r in records if r["message"].startswith("disconnection:")]
        self.assertEqual((end["user"], end["database"]), (self.role, self.db))
        self.assertGreater(end["bytes_received"], 0)
        self.assertGreater(end["bytes_sent"], 0)
