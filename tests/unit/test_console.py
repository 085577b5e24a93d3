"""admin/console.py: the admin console's side after the login, bytes in and bytes out."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

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
        service = ConsoleService(
            lambda: SNAPSHOT,
            lambda: Config(admin_users=("a",)),
            self._reload,
            self._shutdown,
            lambda: (CLIENTS, SERVERS),
            kill=self.kills.append,
            kill_client=self._kill_client,
            reconnect=self.reconnects.append,
        )
        self.console = service.open(admin, self.sent.append, self._close)

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
        self.assertEqual(codes(rig.query("PAUSE")), ["0A000"])
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
