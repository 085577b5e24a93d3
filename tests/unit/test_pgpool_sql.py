"""pgpool-II's SQL commands: which texts the pooler answers, and the session's settings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.cluster import classify
from pgpool_tw.cluster.pgpool_sql import (
    PGPOOL_RESET,
    PGPOOL_SET,
    PGPOOL_SHOW,
    SHOW,
    LocalCommand,
    local_command,
)
from pgpool_tw.config.settings import Config
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.relay import LOCAL_WORDS, SessionTracker, watched_text
from pgpool_tw.session.local import pgpool_command

SKIP = None if classify.AVAILABLE else "pglast is not installed"


def messages_of(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of each message in ``data``."""
    out = []
    while data:
        size = 1 + int.from_bytes(data[1:5], "big")
        out.append((data[:1], data[5:size]))
        data = data[size:]
    return out


def rows(data: bytes) -> list[list[str]]:
    """The DataRows of an answer, as text (NULL as None)."""
    found = []
    for kind, body in messages_of(data):
        if kind == b"D":
            values, at = [], 2
            for _ in range(int.from_bytes(body[:2], "big")):
                size = int.from_bytes(body[at : at + 4], "big", signed=True)
                at += 4
                values.append(None if size < 0 else body[at : at + size].decode())
                at += max(size, 0)
            found.append(values)
    return found


def error_code(data: bytes) -> str:
    for kind, body in messages_of(data):
        if kind == b"E":
            for field in body.split(b"\0"):
                if field[:1] == b"C":
                    return field[1:].decode()
    return ""


class LocalCommandTests(SynchronousTestCase):
    skip = SKIP

    def test_commands(self) -> None:
        """pgpool-II's forms, in any case, with a trailing semicolon; values as written."""
        cases = {
            "SHOW pool_nodes": LocalCommand(SHOW, "pool_nodes"),
            "  show POOL_PROCESSES ;": LocalCommand(SHOW, "pool_processes"),
            "PGPOOL SHOW ALL": LocalCommand(PGPOOL_SHOW, "all"),
            "pgpool show Port;": LocalCommand(PGPOOL_SHOW, "port"),
            "PGPOOL SET client_idle_limit = 350;": LocalCommand(
                PGPOOL_SET, "client_idle_limit", "350"
            ),
            "PGPOOL SET log_min_messages TO 'info'": LocalCommand(
                PGPOOL_SET, "log_min_messages", "info"
            ),
            "PGPOOL SET client_idle_limit TO DEFAULT": LocalCommand(
                PGPOOL_SET, "client_idle_limit", None
            ),
            "PGPOOL RESET ALL": LocalCommand(PGPOOL_RESET, "all"),
            "pgpool reset client_idle_limit": LocalCommand(PGPOOL_RESET, "client_idle_limit"),
        }
        for text, expected in cases.items():
            self.assertEqual(local_command(text), expected, text)

    def test_everything_else_is_postgresqls(self) -> None:
        """Other SHOWs, several statements, broken forms, strings: PostgreSQL answers."""
        for text in (
            "SHOW search_path",
            "SHOW pool_nodes; SELECT 1",
            "SELECT 'SHOW pool_nodes'",
            "PGPOOL",
            "PGPOOL SHOW",
            "PGPOOL SET a",
            "PGPOOL SET a = 1 2",
            "PGPOOL DROP x",
            "pgpoolx show port",
            "SHOW 'pool_nodes'",
            "SHOW pool_nodes pool_pools",
            "",
            "'unterminated",
        ):
            self.assertIsNone(local_command(text), text)

    @settings(max_examples=200)
    @given(
        st.sampled_from(["", " ", "\n\t", "\r\x0b\x0c "]),
        st.sampled_from(["SHOW", "show", "PGPOOL SHOW", "pgpool Set", "PgPool RESET"]),
        st.sampled_from([" pool_nodes", " pool_pools;", " all", " port", " a = 1", " x TO 'y'"]),
    )
    def test_every_command_is_watched(self, space: str, verb: str, rest: str) -> None:
        """Every text the pooler answers starts with a word the trackers watch, so the C
        walk stops before it (LOCAL_WORDS and local_command agree)."""
        text = space + verb + rest
        if local_command(text) is not None:
            raw = text.encode()
            self.assertTrue(watched_text(raw), text)
            query = m.query(text)
            tracker = SessionTracker({}, m.IDLE, LOCAL_WORDS)
            self.assertEqual((tracker.feed_client(query), tracker.local), (0, True), text)


class PgpoolCommandTests(SynchronousTestCase):
    """PGPOOL SHOW/SET/RESET against a session's own settings."""

    def setUp(self) -> None:
        self.config = Config(port=9999, client_idle_limit=0)
        self.overrides: dict[str, object] = {}

    def run_command(self, verb: str, name: str, value: str | None = None) -> bytes:
        return pgpool_command(LocalCommand(verb, name, value), self.config, self.overrides)

    def test_show_one_setting(self) -> None:
        answer = self.run_command(PGPOOL_SHOW, "port")
        self.assertEqual(rows(answer), [["9999"]])
        self.assertIn(b"port\0", answer)  # the column is named after the setting

    def test_set_show_reset(self) -> None:
        """A session's value is shown over pgpool.conf's until RESET or DEFAULT."""
        self.assertIn(b"SET\0", self.run_command(PGPOOL_SET, "client_idle_limit", "350"))
        self.assertEqual(rows(self.run_command(PGPOOL_SHOW, "client_idle_limit")), [["350"]])
        self.assertEqual(self.overrides, {"client_idle_limit": 350})
        self.run_command(PGPOOL_RESET, "client_idle_limit")
        self.assertEqual(rows(self.run_command(PGPOOL_SHOW, "client_idle_limit")), [["0"]])
        self.run_command(PGPOOL_SET, "client_idle_limit", "5min")
        self.assertEqual(self.overrides, {"client_idle_limit": 300})
        self.run_command(PGPOOL_SET, "client_idle_limit", None)
        self.assertEqual(self.overrides, {})

    def test_show_all(self) -> None:
        """PGPOOL SHOW ALL: every setting with its value, the session's own included."""
        self.run_command(PGPOOL_SET, "client_idle_limit", "7")
        found = {row[0]: row[1] for row in rows(self.run_command(PGPOOL_SHOW, "all"))}
        self.assertEqual((found["port"], found["client_idle_limit"]), ("9999", "7"))

    def test_refusals(self) -> None:
        """Unknown names 42704, settings not per session 55P02, bad values 22023."""
        self.assertEqual(error_code(self.run_command(PGPOOL_SHOW, "nonesuch")), "42704")
        self.assertEqual(error_code(self.run_command(PGPOOL_SET, "nonesuch", "1")), "42704")
        self.assertEqual(error_code(self.run_command(PGPOOL_RESET, "nonesuch")), "42704")
        self.assertEqual(error_code(self.run_command(PGPOOL_SET, "port", "1")), "55P02")
        self.assertEqual(
            error_code(self.run_command(PGPOOL_SET, "client_idle_limit", "soon")), "22023"
        )
        self.assertEqual(self.overrides, {})
