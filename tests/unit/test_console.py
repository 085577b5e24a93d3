"""admin/console.py: the admin console's side after the login, bytes in and bytes out."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.admin.console import ConsoleService
from pgpool_tw.admin.snapshot import (
    CLIENT_STATES,
    SERVER_STATES,
    ClientRow,
    NodeStats,
    PoolStats,
    ServerRow,
    Snapshot,
)
from pgpool_tw.config.settings import Config
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.rows import parse_data_row

POOL = PoolStats(
    "k",
    "alice",
    "shop",
    MappingProxyType({**dict.fromkeys(CLIENT_STATES, 0), "active": 3}),
    2,
    1.25,
    MappingProxyType({0: {**dict.fromkeys(SERVER_STATES, 0), "idle": 4, "active": 1}}),
    5,
    40,
    44,
    1000,
    9000,
    0.5,
)
SNAPSHOT = Snapshot(
    0.0,
    MappingProxyType(dict.fromkeys(CLIENT_STATES, 0)),
    2,
    1.25,
    MappingProxyType({"k": POOL}),
    (),
    (NodeStats(0, "db0", 5432, "up", "primary", "primary", 1.0, 0, 0.0, False, 0),),
)


CLIENTS = [
    ClientRow("alice", "shop", "active", "10.0.0.1:5555", 0.0, True, "app", ("listen",), 7),
    ClientRow("bob", "shop", "startup", "local", 60.0, False, "", (), 8),
]
SERVERS = [ServerRow("alice", "shop", "idle", 0, "db0:5432", 4242, 0.0, "app")]


class Rig:
    def __init__(self, admin: bool = True) -> None:
        self.sent: list[bytes] = []
        self.closed = 0
        self.reloads = 0
        self.shutdowns = 0
        self.kills: list[str] = []
        self.reconnects: list[Any] = []
        self.killed_clients: list[int] = []
        self.drains = 0
        self.smarts = 0
        self.pauses: list[tuple[Any, Deferred[None]]] = []
        self.resumes: list[Any] = []
        self.wait_closes: list[tuple[Any, Deferred[None]]] = []
        service = ConsoleService(
            lambda: SNAPSHOT,
            lambda: Config(admin_users=("a",)),
            self._reload,
            self._shutdown,
            lambda: (CLIENTS, SERVERS),
            kill=self.kills.append,
            kill_client=self._kill_client,
            reconnect=self.reconnects.append,
            drain=self._drain,
            smart=self._smart,
            pause=lambda db: self._later(self.pauses, db),
            resume=self._resume,
            wait_close=lambda db: self._later(self.wait_closes, db),
        )
        self.console = service.open(admin, self.sent.append, self._close)

    def _drain(self) -> None:
        self.drains += 1

    def _smart(self) -> None:
        self.smarts += 1

    def _later(self, calls: list[tuple[Any, Deferred[None]]], database: Any) -> Deferred[None]:
        fired: Deferred[None] = Deferred()
        calls.append((database, fired))
        return fired

    def _resume(self, database: Any) -> Any:
        self.resumes.append(database)
        return "nothing is paused" if database == "none" else None

    def _kill_client(self, client_id: int) -> bool:
        self.killed_clients.append(client_id)
        return client_id == 7

    def _reload(self) -> None:
        self.reloads += 1

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def _close(self) -> None:
        self.closed += 1

    def messages(self) -> list[tuple[int, bytes]]:
        out = m.MessageReader().feed(b"".join(self.sent))
        self.sent.clear()
        return out

    def query(self, text: str) -> list[tuple[int, bytes]]:
        self.console.feed(m.query(text))
        return self.messages()


def rows(answer: list[tuple[int, bytes]]) -> list[tuple[Any, ...]]:
    return [parse_data_row(body) for kind, body in answer if kind == ord("D")]


def codes(answer: list[tuple[int, bytes]]) -> list[str]:
    return [m.parse_fields(body)["C"] for kind, body in answer if kind == m.ERROR_RESPONSE]


class ConsoleTests(SynchronousTestCase):
    def test_show_pools_in_pgbouncers_columns(self) -> None:
        answer = Rig().query("show pools;")
        self.assertEqual(
            rows(answer),
            [("shop", "alice", "3", "2", "1", "4", "0", "0", "0", "1", "250000", "session")],
        )
        self.assertEqual(answer[-1], (ord("Z"), b"I"))

    def test_show_stats_sums_per_database(self) -> None:
        self.assertEqual(
            rows(Rig().query("SHOW STATS")), [("shop", "40", "44", "1000", "9000", "500000")]
        )

    def test_unknown_and_not_yet(self) -> None:
        rig = Rig()
        self.assertEqual(codes(rig.query("SHOW NOTHING")), ["42601"])
        self.assertEqual(codes(rig.query("select 1")), ["42601"])
        self.assertEqual(codes(rig.query("SHOW MEM")), ["0A000"])
        self.assertEqual(codes(rig.query("SUSPEND")), ["0A000"])
        self.assertEqual(codes(rig.query("KILL")), ["42601"])  # KILL needs a database
        self.assertEqual(rig.query(""), [(ord("I"), b""), (ord("Z"), b"I")])

    def test_reload_and_shutdown_for_admins_only(self) -> None:
        stats = Rig(admin=False)
        self.assertEqual(codes(stats.query("RELOAD")), ["42501"])
        self.assertEqual(codes(stats.query("SHUTDOWN")), ["42501"])
        self.assertEqual((stats.reloads, stats.shutdowns), (0, 0))
        admin = Rig()
        self.assertIn((ord("C"), b"RELOAD\0"), admin.query("reload"))
        admin.query("SHUTDOWN")
        self.assertEqual((admin.reloads, admin.shutdowns), (1, 1))

    def test_messages_cut_anywhere(self) -> None:
        rig = Rig()
        data = m.query("SHOW VERSION") + m.query("SHOW LISTS")
        for i in range(len(data)):
            rig.console.feed(data[i : i + 1])
        answer = rig.messages()
        self.assertEqual([kind for kind, _ in answer].count(ord("Z")), 2)
        self.assertIn(("pools", "1"), rows(answer))

    def test_extended_protocol_is_refused_once_per_batch(self) -> None:
        rig = Rig()
        batch = m.message(b"P", b"\0SHOW POOLS\0\0\0") + m.message(b"B", b"\0\0\0\0\0\0\0\0")
        rig.console.feed(batch + m.message(b"E", b"\0\0\0\0\0") + m.message(b"S"))
        answer = rig.messages()
        self.assertEqual(codes(answer), ["0A000"])
        self.assertEqual(answer[-1], (ord("Z"), b"I"))

    def test_terminate_closes(self) -> None:
        rig = Rig()
        rig.console.feed(m.terminate())
        self.assertEqual(rig.closed, 1)

    def test_show_config_lists_every_setting(self) -> None:
        answer = Rig().query("SHOW CONFIG")
        table = {row[0]: row[1:] for row in rows(answer)}
        self.assertEqual(table["admin_users"], ("a", "", "yes"))
        self.assertEqual(table["port"][2], "no")
        self.assertNotIn("given", table)

    def test_show_clients_and_servers(self) -> None:
        rig = Rig(admin=False)
        self.assertEqual(
            rows(rig.query("SHOW CLIENTS")),
            [
                ("C", "alice", "shop", "active", "10.0.0.1", "5555",
                 "1970-01-01 00:00:00 UTC", "on", "app", "listen", "7"),
                ("C", "bob", "shop", "startup", "local", None,
                 "1970-01-01 00:01:00 UTC", "", "", "", "8"),
            ],
        )  # fmt: skip
        self.assertEqual(
            rows(rig.query("SHOW SERVERS")),
            [("S", "alice", "shop", "idle", "db0", "5432", "0", "4242",
              "1970-01-01 00:00:00 UTC", "app")],
        )  # fmt: skip

    def test_kill_and_reconnect(self) -> None:
        stats = Rig(admin=False)
        self.assertEqual(codes(stats.query("KILL shop")), ["42501"])
        self.assertEqual(codes(stats.query("RECONNECT")), ["42501"])
        self.assertEqual((stats.kills, stats.reconnects), ([], []))
        admin = Rig()
        self.assertIn((ord("C"), b"KILL\0"), admin.query("kill shop;"))
        admin.query("RECONNECT")
        admin.query("reconnect Shop")
        self.assertEqual((admin.kills, admin.reconnects), (["shop"], [None, "Shop"]))

    def test_kill_client(self) -> None:
        stats = Rig(admin=False)
        self.assertEqual(codes(stats.query("KILL_CLIENT 7")), ["42501"])
        admin = Rig()
        self.assertIn((ord("C"), b"KILL_CLIENT\0"), admin.query("KILL_CLIENT 7"))
        self.assertEqual(codes(admin.query("KILL_CLIENT 9")), ["42704"])
        self.assertEqual(codes(admin.query("KILL_CLIENT x")), ["42704"])
        self.assertEqual(admin.killed_clients, [7, 9])


class PauseCommandTests(SynchronousTestCase):
    def test_pause_answers_when_paused_and_holds_what_follows(self) -> None:
        """PAUSE's answer comes when the service says paused; later commands wait for it."""
        rig = Rig()
        rig.console.feed(m.query("PAUSE shop") + m.query("SHOW VERSION"))
        self.assertEqual(rig.messages(), [])
        ((database, fired),) = rig.pauses
        self.assertEqual(database, "shop")
        fired.callback(None)
        answer = rig.messages()
        self.assertEqual(answer[:2], [(ord("C"), b"PAUSE\0"), (ord("Z"), b"I")])
        self.assertEqual([kind for kind, _ in answer].count(ord("Z")), 2)  # SHOW VERSION too

    def test_pause_without_a_database_pauses_all(self) -> None:
        rig = Rig()
        rig.console.feed(m.query("pause;"))
        self.assertEqual([db for db, _ in rig.pauses], [None])

    def test_resume_and_its_refusal(self) -> None:
        """RESUME answers at once; one the service refuses is an error naming why."""
        rig = Rig()
        self.assertIn((ord("C"), b"RESUME\0"), rig.query("RESUME shop"))
        answer = rig.query("RESUME none")
        self.assertEqual(codes(answer), ["55000"])
        self.assertEqual(rig.resumes, ["shop", "none"])

    def test_wait_close_answers_when_the_servers_are_closed(self) -> None:
        rig = Rig()
        rig.console.feed(m.query("WAIT_CLOSE"))
        self.assertEqual(rig.messages(), [])
        rig.wait_closes[0][1].callback(None)
        self.assertIn((ord("C"), b"WAIT_CLOSE\0"), rig.messages())

    def test_shutdown_wait_for_servers_drains(self) -> None:
        """SHUTDOWN WAIT_FOR_SERVERS drains, WAIT_FOR_CLIENTS is smart, plain SHUTDOWN fast."""
        rig = Rig()
        self.assertIn((ord("C"), b"SHUTDOWN\0"), rig.query("SHUTDOWN WAIT_FOR_SERVERS"))
        rig.query("shutdown wait_for_clients")
        self.assertEqual((rig.drains, rig.smarts, rig.shutdowns), (1, 1, 0))
        self.assertEqual(codes(rig.query("SHUTDOWN NOW")), ["42601"])

    def test_pause_commands_are_for_admins_only(self) -> None:
        rig = Rig(admin=False)
        for command in ("PAUSE", "RESUME", "WAIT_CLOSE", "SHUTDOWN WAIT_FOR_SERVERS"):
            self.assertEqual(codes(rig.query(command)), ["42501"], command)
        self.assertEqual((rig.pauses, rig.resumes, rig.drains), ([], [], 0))
