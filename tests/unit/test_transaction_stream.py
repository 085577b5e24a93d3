"""session/transaction.py: a transaction-mode client's stream, bytes in and bytes out.

No sockets: a server here is what the stream reads of one (send, params, prepared,
replayed), and the owner records what the stream asks of the session.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pgpool_tw.cluster import session_state
from pgpool_tw.cluster.session_state import PREPARED
from pgpool_tw.protocol import messages as m
from pgpool_tw.session.transaction import (
    NAMED_STATEMENT,
    StatementNames,
    TransactionStream,
    sql_prepared,
)


class FakeServer:
    def __init__(self, name: str = "a") -> None:
        self.name = name
        self.sent: list[bytes] = []
        self.params: dict[str, str] = {"application_name": "app"}
        self.prepared: OrderedDict[bytes, None] = OrderedDict()
        self.replayed: dict[str, str] = {}
        self.sql_prepared: dict[str, str] = {}
        self.status = m.IDLE

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def messages(self) -> list[tuple[bytes, bytes]]:
        return split(b"".join(self.sent))


class Owner:
    def __init__(self) -> None:
        self.wants = 0
        self.firsts: list[Optional[str]] = []
        self.releases = 0
        self.holds = 0
        self.broken: list[str] = []
        self.stream: Optional[TransactionStream] = None

    def want_server(self, first: bytes) -> None:
        self.wants += 1
        assert self.stream is not None
        self.firsts.append(self.stream.statement_text(first))

    def hold_server(self) -> None:
        self.holds += 1

    def release_server(self) -> None:
        self.releases += 1
        assert self.stream is not None
        self.stream.detached()

    def stream_broken(self, why: str) -> None:
        self.broken.append(why)


def split(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 5], "big")
        out.append((data[pos : pos + 1], data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return m.message(kind, body)


def parse(name: bytes, text: bytes) -> bytes:
    return msg(b"P", name + b"\0" + text + b"\0\x00\x00")


def bind(name: bytes) -> bytes:
    return msg(b"B", b"\0" + name + b"\0\x00\x00\x00\x00\x00\x00")


def execute() -> bytes:
    return msg(b"E", b"\0\x00\x00\x00\x00")


SYNC = msg(b"S")
PARSE_OK = msg(b"1")
BIND_OK = msg(b"2")
CLOSE_OK = msg(b"3")


def ready(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def complete(tag: bytes) -> bytes:
    return msg(b"C", tag + b"\0")


def row(value: bytes) -> bytes:
    return msg(b"D", b"\x00\x01" + len(value).to_bytes(4, "big") + value)


class StreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")
        self.client: list[bytes] = []
        self.owner = Owner()
        self.names = StatementNames()
        self.stream = self.make()

    def make(self, max_prepared: int = 200) -> TransactionStream:
        stream = TransactionStream(
            self.client.append, self.owner, self.names, max_prepared, "app", None
        )
        self.owner.stream = stream
        return stream

    def got(self) -> list[tuple[bytes, bytes]]:
        data = b"".join(self.client)
        self.client.clear()
        return split(data)

    def run_query(self, server: FakeServer, text: str, *reply: bytes) -> None:
        """A Query on whatever server the stream holds (``server`` if it needs one)."""
        self.stream.feed_client(m.query(text))
        if self.stream.server is None:
            self.stream.attach(server)  # type: ignore[arg-type]
        self.stream.feed_server(b"".join(reply))

    # -- borrow and release -------------------------------------------------------------

    def test_a_query_borrows_a_server_and_gives_it_back_at_idle(self) -> None:
        stream, server = self.stream, FakeServer()
        stream.feed_client(m.query("SELECT 1"))
        self.assertEqual(self.owner.wants, 1)
        self.assertEqual(self.owner.firsts, ["SELECT 1"])
        stream.feed_client(m.query("SELECT 2"))
        self.assertEqual(self.owner.wants, 1, "asked once while waiting")
        stream.attach(server)  # type: ignore[arg-type]
        self.assertEqual([k for k, _ in server.messages()], [b"Q", b"Q"])
        stream.feed_server(row(b"1") + complete(b"SELECT 1") + ready())
        self.assertEqual(self.owner.releases, 0, "the second query is still owed")
        stream.feed_server(row(b"2") + complete(b"SELECT 1") + ready())
        self.assertEqual(self.owner.releases, 1)
        self.assertIsNone(stream.server)
        kinds = [k for k, _ in self.got()]
        self.assertEqual(kinds, [b"D", b"C", b"Z", b"D", b"C", b"Z"])
        self.assertEqual(stream.take_counts()[:2], (2, 2))

    def test_a_transaction_keeps_its_server_until_it_ends(self) -> None:
        server = FakeServer()
        self.run_query(server, "BEGIN", complete(b"BEGIN"), ready(b"T"))
        self.assertEqual(self.owner.releases, 0)
        self.run_query(server, "SELECT 1", complete(b"SELECT 1"), ready(b"T"))
        self.assertIs(self.stream.server, server)
        self.run_query(server, "COMMIT", complete(b"COMMIT"), ready(b"I"))
        self.assertEqual(self.owner.releases, 1)
        self.assertEqual(self.owner.wants, 1)

    def test_terminate_is_not_forwarded(self) -> None:
        self.assertEqual(self.stream.feed_client(m.terminate()), 0)
        self.assertEqual(self.owner.wants, 0)

    def test_a_bad_length_breaks_the_stream(self) -> None:
        self.stream.feed_client(b"Q\x00\x00\x00\x02")
        self.assertEqual(len(self.owner.broken), 1)

    # -- prepared statements ---------------------------------------------------------

    def prepare_on(self, server: FakeServer, name: bytes = b"s1") -> bytes:
        stream = self.stream
        stream.feed_client(parse(name, b"SELECT $1::int") + bind(name) + execute() + SYNC)
        if stream.server is None:
            stream.attach(server)  # type: ignore[arg-type]
        sent = server.messages()
        ours = sent[0][1].split(b"\0")[0]
        stream.feed_server(PARSE_OK + BIND_OK + row(b"1") + complete(b"SELECT 1") + ready())
        return ours

    def test_a_named_statement_is_prepared_under_the_poolers_name(self) -> None:
        a = FakeServer("a")
        ours = self.prepare_on(a)
        self.assertTrue(ours.startswith(b"pgpool_tw_"))
        kinds = [k for k, _ in a.messages()]
        self.assertEqual(kinds, [b"P", b"B", b"E", b"S"])
        self.assertEqual(a.messages()[1][1].split(b"\0")[1], ours, "Bind renamed")
        self.assertEqual([k for k, _ in self.got()], [b"1", b"2", b"D", b"C", b"Z"])
        self.assertIn(ours, a.prepared)

    def test_the_statement_follows_the_client_to_another_server(self) -> None:
        a, b = FakeServer("a"), FakeServer("b")
        ours = self.prepare_on(a)
        self.got()
        stream = self.stream
        stream.feed_client(bind(b"s1") + execute() + SYNC)
        stream.attach(b)  # type: ignore[arg-type]
        sent = b.messages()
        self.assertEqual([k for k, _ in sent], [b"P", b"B", b"E", b"S"])
        self.assertEqual(sent[0][1].split(b"\0")[0], ours)
        stream.feed_server(PARSE_OK + BIND_OK + row(b"1") + complete(b"SELECT 1") + ready())
        self.assertEqual(
            [k for k, _ in self.got()], [b"2", b"D", b"C", b"Z"], "its ParseComplete is hidden"
        )
        self.assertEqual(self.owner.releases, 2)

    def test_a_parse_the_server_has_is_answered_by_the_pooler(self) -> None:
        a = FakeServer("a")
        self.prepare_on(a, b"s1")
        other = self.make()  # another client, same statement text
        self.client.clear()
        other.feed_client(parse(b"mine", b"SELECT $1::int") + bind(b"mine") + execute() + SYNC)
        a.sent.clear()
        other.attach(a)  # type: ignore[arg-type]
        self.assertEqual([k for k, _ in a.messages()], [b"B", b"E", b"S"])
        self.assertEqual([k for k, _ in self.got()], [b"1"], "ParseComplete at once, first")
        other.feed_server(BIND_OK + complete(b"SELECT 1") + ready())
        self.assertEqual([k for k, _ in self.got()], [b"2", b"C", b"Z"])

    def test_a_clients_statement_is_never_another_clients(self) -> None:
        a = FakeServer("a")
        self.prepare_on(a, b"s1")
        other = self.make()
        other.feed_client(bind(b"s1") + execute() + SYNC)
        a.sent.clear()
        other.attach(a)  # type: ignore[arg-type]
        bound = a.messages()[0][1].split(b"\0")[1]
        self.assertEqual(bound, b"s1", "sent as the client named it: the server refuses it")

    def test_close_is_answered_and_closes_nothing(self) -> None:
        a = FakeServer("a")
        ours = self.prepare_on(a)
        self.got()
        self.stream.feed_client(msg(b"C", b"Ss1\0") + SYNC)
        a.sent.clear()
        self.stream.attach(a)  # type: ignore[arg-type]
        self.assertEqual([k for k, _ in a.messages()], [b"S"])
        self.stream.feed_server(ready())
        self.assertEqual([k for k, _ in self.got()], [b"3", b"Z"])
        self.assertIn(ours, a.prepared)
        self.assertNotIn(b"s1", self.stream.statements)

    def test_an_error_skips_to_the_sync_and_forgets_what_was_not_parsed(self) -> None:
        a = FakeServer("a")
        stream = self.stream
        stream.feed_client(parse(b"bad", b"SELECT nope") + bind(b"bad") + execute() + SYNC)
        stream.attach(a)  # type: ignore[arg-type]
        self.assertEqual(len(a.prepared), 1)
        stream.feed_server(m.error_response("42703", "column nope does not exist") + ready())
        self.assertEqual([k for k, _ in self.got()], [b"E", b"Z"])
        self.assertEqual(len(a.prepared), 0)
        self.assertEqual(self.owner.releases, 1)

    def test_the_least_recently_used_statement_is_closed_past_the_limit(self) -> None:
        self.stream = self.make(max_prepared=1)
        a = FakeServer("a")
        first = self.prepare_on(a, b"s1")
        a.sent.clear()
        self.stream.feed_client(parse(b"s2", b"SELECT 2") + SYNC)
        self.stream.attach(a)  # type: ignore[arg-type]
        sent = a.messages()
        self.assertEqual([k for k, _ in sent], [b"C", b"P", b"S"])
        self.assertEqual(sent[0][1], b"S" + first + b"\0")
        self.got()
        self.stream.feed_server(CLOSE_OK + PARSE_OK + ready())
        self.assertEqual([k for k, _ in self.got()], [b"1", b"Z"], "its CloseComplete is hidden")

    def test_no_statement_cache_pins_instead(self) -> None:
        self.stream = self.make(max_prepared=0)
        a = FakeServer("a")
        self.stream.feed_client(parse(b"s1", b"SELECT 1") + SYNC)
        self.stream.attach(a)  # type: ignore[arg-type]
        self.assertEqual(a.messages()[0][1].split(b"\0")[0], b"s1")
        self.stream.feed_server(PARSE_OK + ready())
        self.assertEqual(self.owner.releases, 0)
        self.assertIn(NAMED_STATEMENT, self.stream.pinned)

    def test_sql_deallocate_of_a_protocol_statement_is_answered_by_the_pooler(self) -> None:
        a = FakeServer("a")
        self.prepare_on(a, b"_pg3_0")
        self.got()
        self.stream.feed_client(m.query("DEALLOCATE _pg3_0"))
        a.sent.clear()
        self.stream.attach(a)  # type: ignore[arg-type]
        self.assertEqual(a.sent, [])
        self.assertEqual([k for k, _ in self.got()], [b"C", b"Z"])
        self.assertNotIn(b"_pg3_0", self.stream.statements)

    # -- session state ---------------------------------------------------------------------

    def test_listen_pins_until_unlisten_all(self) -> None:
        a = FakeServer("a")
        self.run_query(a, "LISTEN ch", complete(b"LISTEN"), ready())
        self.assertEqual((self.owner.releases, self.owner.holds), (0, 1))  # held, not given back
        self.assertEqual(set(self.stream.pinned), {"listen"})
        self.run_query(a, "UNLISTEN *", complete(b"UNLISTEN"), ready())
        self.assertEqual(self.owner.releases, 1)

    def test_a_replayable_setting_is_replayed_on_the_next_server_unseen(self) -> None:
        a, b = FakeServer("a"), FakeServer("b")
        self.run_query(
            a,
            "SET TimeZone TO 'UTC'",
            msg(b"S", b"TimeZone\0UTC\0") + complete(b"SET"),
            ready(),
        )
        self.assertEqual(self.owner.releases, 1, "not a pin")
        self.assertEqual([k for k, _ in self.got()], [b"S", b"C", b"Z"])
        self.stream.feed_client(m.query("SELECT now()"))
        self.stream.attach(b)  # type: ignore[arg-type]
        sent = b.messages()
        self.assertEqual(sent[0], (b"Q", b"SET TimeZone TO 'UTC'\0"))
        self.stream.feed_server(
            msg(b"S", b"TimeZone\0UTC\0") + complete(b"SET") + ready() + row(b"x")
        )
        self.stream.feed_server(complete(b"SELECT 1") + ready())
        self.assertEqual([k for k, _ in self.got()], [b"D", b"C", b"Z"])
        self.assertEqual(b.params["TimeZone"], "UTC")
        # The next client on b gets b's setting undone.
        other = self.make()
        other.feed_client(m.query("SELECT 1"))
        b.sent.clear()
        other.attach(b)  # type: ignore[arg-type]
        self.assertEqual(b.messages()[0], (b"Q", b"RESET timezone\0"))

    def test_the_clients_application_name_is_set_on_each_server(self) -> None:
        a = FakeServer("a")
        a.params["application_name"] = "someone else"
        self.stream.feed_client(m.query("SELECT 1"))
        self.stream.attach(a)  # type: ignore[arg-type]
        self.assertEqual(a.messages()[0], (b"Q", b"SET application_name TO 'app'\0"))

    def test_a_set_inside_a_transaction_pins(self) -> None:
        a = FakeServer("a")
        self.run_query(a, "BEGIN", complete(b"BEGIN"), ready(b"T"))
        self.run_query(a, "SET search_path TO x", complete(b"SET"), ready(b"T"))
        self.run_query(a, "COMMIT", complete(b"COMMIT"), ready(b"I"))
        self.assertEqual(self.owner.releases, 0)
        self.assertIn("set", self.stream.pinned)

    def test_discard_all_unpins(self) -> None:
        a = FakeServer("a")
        self.run_query(a, "SET work_mem = '8MB'", complete(b"SET"), ready())
        self.assertEqual(self.owner.releases, 0)
        self.run_query(a, "DISCARD ALL", complete(b"DISCARD ALL"), ready())
        self.assertEqual(self.owner.releases, 1)


class Client:
    """One transaction-mode client: its stream, what it was sent, its owner."""

    def __init__(self, names: StatementNames) -> None:
        self.out: list[bytes] = []
        self.owner = Owner()
        self.stream = TransactionStream(self.out.append, self.owner, names, 200, "app", None)
        self.owner.stream = self.stream

    def got(self) -> list[tuple[bytes, bytes]]:
        data = b"".join(self.out)
        self.out.clear()
        return split(data)

    def query(self, server: FakeServer, text: str) -> list[tuple[bytes, bytes]]:
        """Send a Query (on ``server`` if it holds none); what the server was sent."""
        server.sent.clear()
        self.stream.feed_client(m.query(text))
        if self.stream.server is None:
            self.stream.attach(server)  # type: ignore[arg-type]
        return server.messages()

    def answer(self, *reply: bytes) -> list[tuple[bytes, bytes]]:
        """The server's answer; what reached the client."""
        self.stream.feed_server(b"".join(reply))
        return self.got()


def queries(sent: list[tuple[bytes, bytes]]) -> list[str]:
    return [body[:-1].decode() for kind, body in sent if kind == b"Q"]


def does_not_exist(name: str) -> bytes:
    return m.error_response("26000", f'prepared statement "{name}" does not exist', "ERROR")


PREPARE_Q = "PREPARE q (int) AS SELECT $1 + 1"
PREPARED_OK = complete(b"PREPARE") + ready()


class SqlPreparedTests(SynchronousTestCase):
    """SQL PREPARE / EXECUTE / DEALLOCATE across servers, under the client's names."""

    def setUp(self) -> None:
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")
        self.names = StatementNames()
        self.a, self.b = FakeServer("a"), FakeServer("b")

    def prepared_on(self, server: FakeServer, text: str = PREPARE_Q) -> Client:
        client = Client(self.names)
        self.assertEqual(queries(client.query(server, text)), [text])
        self.assertEqual([k for k, _ in client.answer(PREPARED_OK)], [b"C", b"Z"])
        self.assertEqual(client.owner.releases, 1, "not a pin")
        self.assertEqual(client.stream.pinned, {})
        return client

    def test_a_prepared_statement_follows_the_client_unseen(self) -> None:
        client = self.prepared_on(self.a)
        self.assertEqual(client.stream.sql.texts, {"q": PREPARE_Q})
        self.assertEqual(self.a.sql_prepared, {"q": PREPARE_Q})
        sent = client.query(self.b, "EXECUTE q(41)")
        self.assertEqual(queries(sent), [PREPARE_Q, "EXECUTE q(41)"])
        got = client.answer(PREPARED_OK + row(b"42") + complete(b"SELECT 1") + ready())
        self.assertEqual([k for k, _ in got], [b"D", b"C", b"Z"], "the hidden PREPARE unseen")
        self.assertEqual(self.b.sql_prepared, {"q": PREPARE_Q})
        self.assertEqual(client.owner.releases, 2)
        # Back on a, which has it: nothing hidden.
        self.assertEqual(queries(client.query(self.a, "EXECUTE q(1)")), ["EXECUTE q(1)"])

    def test_another_clients_statement_of_that_name_is_replaced(self) -> None:
        first = self.prepared_on(self.a)
        other_text = "PREPARE q AS SELECT 'other'"
        second = self.prepared_on(self.b, other_text)
        # The second client lands on a, which holds the first one's q.
        sent = second.query(self.a, "EXECUTE q")
        self.assertEqual(queries(sent), ['DEALLOCATE "q"', other_text, "EXECUTE q"])
        got = second.answer(
            complete(b"DEALLOCATE") + ready() + PREPARED_OK + row(b"other") + complete(b"SELECT 1")
        )
        self.assertEqual([k for k, _ in got], [b"D", b"C"])
        self.assertEqual(second.answer(ready()), [(b"Z", b"I")])
        self.assertEqual(self.a.sql_prepared, {"q": other_text})
        # And back: the first client's q is put again on a.
        self.assertEqual(
            queries(first.query(self.a, "EXECUTE q(1)")),
            ['DEALLOCATE "q"', PREPARE_Q, "EXECUTE q(1)"],
        )

    def test_a_prepare_of_a_name_another_client_left_deallocates_it_first(self) -> None:
        self.prepared_on(self.a)
        second = Client(self.names)
        text = "PREPARE q AS SELECT 2"
        self.assertEqual(queries(second.query(self.a, text)), ['DEALLOCATE "q"', text])
        got = second.answer(complete(b"DEALLOCATE") + ready() + PREPARED_OK)
        self.assertEqual(got, [(b"C", b"PREPARE\0"), (b"Z", b"I")])
        self.assertEqual(self.a.sql_prepared, {"q": text})

    def test_a_prepare_of_the_text_the_server_holds_is_answered_by_the_pooler(self) -> None:
        self.prepared_on(self.a)
        second = Client(self.names)
        self.assertEqual(second.query(self.a, PREPARE_Q), [])
        self.assertEqual(second.got(), [(b"C", b"PREPARE\0"), (b"Z", b"I")])
        self.assertEqual(second.stream.sql.texts, {"q": PREPARE_Q})
        self.assertEqual(second.owner.releases, 1)

    def test_an_execute_of_a_name_the_client_lacks_never_runs_anothers(self) -> None:
        self.prepared_on(self.a)
        second = Client(self.names)
        sent = second.query(self.a, "EXECUTE q(1)")
        self.assertEqual(queries(sent), ['DEALLOCATE "q"', "EXECUTE q(1)"])
        got = second.answer(complete(b"DEALLOCATE") + ready() + does_not_exist("q") + ready())
        self.assertEqual([k for k, _ in got], [b"E", b"Z"])
        self.assertEqual(self.a.sql_prepared, {})

    def test_deallocate_where_the_server_lacks_it_is_answered_by_the_pooler(self) -> None:
        client = self.prepared_on(self.a)
        self.assertEqual(client.query(self.b, "DEALLOCATE q"), [])
        self.assertEqual(client.got(), [(b"C", b"DEALLOCATE\0"), (b"Z", b"I")])
        self.assertEqual(client.stream.sql.texts, {})
        self.assertEqual(self.a.sql_prepared, {"q": PREPARE_Q}, "left for the next client")
        # Gone: an EXECUTE of it deallocates a's copy first, so a says it does not exist.
        sent = client.query(self.a, "EXECUTE q(1)")
        self.assertEqual(queries(sent), ['DEALLOCATE "q"', "EXECUTE q(1)"])

    def test_deallocate_where_the_server_has_it_is_forwarded(self) -> None:
        client = self.prepared_on(self.a)
        self.assertEqual(
            queries(client.query(self.a, "DEALLOCATE PREPARE q")), ["DEALLOCATE PREPARE q"]
        )
        client.answer(complete(b"DEALLOCATE") + ready())
        self.assertEqual((client.stream.sql.texts, self.a.sql_prepared), ({}, {}))

    def test_a_failed_prepare_is_not_recorded(self) -> None:
        client = Client(self.names)
        client.query(self.a, "PREPARE q AS SELECT nope")
        got = client.answer(
            m.error_response("42703", "column nope does not exist", "ERROR") + ready()
        )
        self.assertEqual([k for k, _ in got], [b"E", b"Z"])
        self.assertEqual((client.stream.sql.texts, self.a.sql_prepared), ({}, {}))
        self.assertEqual(client.owner.releases, 1)

    def test_a_hidden_prepare_that_fails_leaves_the_server_without_it(self) -> None:
        client = self.prepared_on(self.a)
        client.query(self.b, "EXECUTE q(1)")
        got = client.answer(
            m.error_response("42P01", "relation does not exist", "ERROR")
            + ready()
            + does_not_exist("q")
            + ready()
        )
        self.assertEqual([k for k, _ in got], [b"E", b"Z"], "only the EXECUTE's error")
        self.assertEqual(self.b.sql_prepared, {})
        self.assertEqual(client.stream.sql.texts, {"q": PREPARE_Q}, "still the client's")

    def test_nothing_hidden_in_a_failed_transaction(self) -> None:
        client = self.prepared_on(self.a)
        client.query(self.b, "BEGIN")
        client.answer(complete(b"BEGIN") + ready(b"T"))
        client.query(self.b, "SELECT 1/0")
        client.answer(m.error_response("22012", "division by zero", "ERROR") + ready(b"E"))
        self.assertEqual(queries(client.query(self.b, "EXECUTE q(1)")), ["EXECUTE q(1)"])

    def test_explain_execute_puts_the_statement_there_too(self) -> None:
        client = self.prepared_on(self.a)
        sent = client.query(self.b, "EXPLAIN EXECUTE q(1)")
        self.assertEqual(queries(sent), [PREPARE_Q, "EXPLAIN EXECUTE q(1)"])
        self.assertEqual(client.stream.pinned, {})

    def test_what_the_statement_leaves_pins_when_it_runs(self) -> None:
        client = self.prepared_on(self.a, "PREPARE lock AS SELECT pg_advisory_lock(7)")
        client.query(self.a, "EXECUTE lock")
        self.assertEqual(set(client.stream.pinned), {"advisory_lock"})

    def test_a_failed_text_of_several_statements_pins_until_deallocate_all(self) -> None:
        client = Client(self.names)
        client.query(self.a, "PREPARE q AS SELECT 1; SELECT 1/0")
        client.answer(PREPARED_OK[:-6] + m.error_response("22012", "by zero", "ERROR") + ready())
        self.assertEqual(set(client.stream.pinned), {PREPARED}, "what it left is not known")
        self.assertEqual(client.owner.releases, 0)
        # The server is the truth now: nothing hidden, nothing answered by the pooler.
        self.assertEqual(queries(client.query(self.a, "DEALLOCATE q")), ["DEALLOCATE q"])
        client.answer(complete(b"DEALLOCATE") + ready())
        client.query(self.a, "DEALLOCATE ALL")
        client.answer(complete(b"DEALLOCATE ALL") + ready())
        self.assertEqual(client.stream.pinned, {})
        self.assertEqual(client.owner.releases, 1)

    def test_a_text_of_several_statements_counts_in_order(self) -> None:
        client = Client(self.names)
        text = "PREPARE a AS SELECT 1; DEALLOCATE ALL; PREPARE b AS SELECT 2"
        client.query(self.a, text)
        client.answer(complete(b"PREPARE") + complete(b"DEALLOCATE ALL") + PREPARED_OK)
        self.assertEqual(client.stream.sql.texts, {"b": "PREPARE b AS SELECT 2"})
        self.assertEqual(self.a.sql_prepared, {"b": "PREPARE b AS SELECT 2"})
        self.assertEqual(client.stream.pinned, {})

    def test_discard_all_forgets_them(self) -> None:
        client = self.prepared_on(self.a)
        client.query(self.a, "DISCARD ALL")
        client.answer(complete(b"DISCARD ALL") + ready())
        self.assertEqual((client.stream.sql.texts, self.a.sql_prepared), ({}, {}))

    def test_an_execute_prepared_by_the_extended_protocol_follows_too(self) -> None:
        """psycopg prepares a text it ran five times: Parse of "EXECUTE q", then Binds."""
        client = self.prepared_on(self.a)
        stream = client.stream
        stream.feed_client(parse(b"_pg3_0", b"EXECUTE q(1)") + SYNC)
        stream.attach(self.a)  # type: ignore[arg-type]
        stream.feed_server(PARSE_OK + ready())
        client.got()
        self.b.sent.clear()
        stream.feed_client(bind(b"_pg3_0") + execute() + SYNC)
        stream.attach(self.b)  # type: ignore[arg-type]
        sent = self.b.messages()
        self.assertEqual([k for k, _ in sent], [b"Q", b"P", b"B", b"E", b"S"])
        self.assertEqual(queries(sent), [PREPARE_Q])
        stream.feed_server(
            PREPARED_OK + PARSE_OK + BIND_OK + row(b"2") + complete(b"SELECT 1") + ready()
        )
        self.assertEqual([k for k, _ in client.got()], [b"2", b"D", b"C", b"Z"])

    def test_a_prepare_by_the_extended_protocol_counts_when_its_batch_succeeds(self) -> None:
        batch = parse(b"", b"PREPARE q AS SELECT 1") + bind(b"") + execute() + SYNC
        client = Client(self.names)
        client.stream.feed_client(batch)
        client.stream.attach(self.a)  # type: ignore[arg-type]
        client.answer(PARSE_OK + BIND_OK + PREPARED_OK)
        self.assertEqual(client.stream.sql.texts, {"q": "PREPARE q AS SELECT 1"})
        self.assertEqual(client.owner.releases, 1)
        # A batch that fails: whether its PREPARE ran before the error is not known.
        other = Client(self.names)
        other.stream.feed_client(batch)
        other.stream.attach(self.b)  # type: ignore[arg-type]
        other.answer(m.error_response("42P05", "exists", "ERROR") + ready())
        self.assertEqual(set(other.stream.pinned), {PREPARED})
        self.assertEqual(other.stream.sql.texts, {})

    def test_a_deallocate_among_other_statements_is_never_answered_by_the_pooler(self) -> None:
        client = Client(self.names)
        client.stream.statements[b"_pg3_0"] = b"SELECT 1\0\x00\x00"
        text = "SELECT 1; DEALLOCATE _pg3_0"
        self.assertEqual(queries(client.query(self.a, text)), [text])

    def test_a_lease_puts_all_the_clients_statements_before_a_pipeline(self) -> None:
        client = self.prepared_on(self.a)
        client.query(self.a, "PREPARE r AS SELECT 3")
        client.answer(PREPARED_OK)
        stream = client.stream
        # A pipeline: EXECUTE r in the middle of a batch, where nothing can go before it.
        stream.feed_client(
            parse(b"", b"SELECT 0")
            + bind(b"")
            + execute()
            + parse(b"", b"EXECUTE r")
            + bind(b"")
            + execute()
            + SYNC
        )
        stream.attach(self.b)  # type: ignore[arg-type]
        sent = self.b.messages()
        self.assertEqual(queries(sent), [PREPARE_Q, "PREPARE r AS SELECT 3"])
        self.assertEqual([k for k, _ in sent][2:], [b"P", b"B", b"E", b"P", b"B", b"E", b"S"])

    def test_a_hidden_statement_never_goes_inside_a_batch(self) -> None:
        client = Client(self.names)
        stream = client.stream
        self.b.sql_prepared["q"] = "PREPARE q AS SELECT 'other'"
        stream.feed_client(parse(b"", b"SELECT 0") + bind(b"") + parse(b"", b"EXECUTE q"))
        stream.attach(self.b)  # type: ignore[arg-type]
        self.assertEqual(queries(self.b.messages()), [])

    def test_a_server_keeps_a_bounded_number_of_departed_clients_statements(self) -> None:
        self.patch(sql_prepared, "KEPT", 2)
        for name in "uvwxyz":
            self.a.sql_prepared[name] = f"PREPARE {name} AS SELECT 1"
        client = self.prepared_on(self.b, "PREPARE x AS SELECT 1")
        self.a.sent.clear()
        client.stream.feed_client(m.query("SELECT 1"))
        client.stream.attach(self.a)  # type: ignore[arg-type]
        self.assertEqual(
            queries(self.a.messages()),
            ['DEALLOCATE "u"', 'DEALLOCATE "v"', 'DEALLOCATE "w"', "SELECT 1"],
        )
        self.assertEqual(list(self.a.sql_prepared), ["x", "y", "z"])


class ChunkTests(SynchronousTestCase):
    """A server's answer cut anywhere reaches the client as the same bytes."""

    def setUp(self) -> None:
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")

    @settings(max_examples=200, deadline=None)
    @given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
    def test_cut_anywhere(self, cuts: list[int]) -> None:
        names = StatementNames()
        whole: list[bytes] = []
        pieces: list[bytes] = []
        reply = (
            msg(b"S", b"TimeZone\0UTC\0")  # the hidden replay's
            + complete(b"SET")
            + ready()
            + PARSE_OK  # the hidden Parse's
            + BIND_OK
            + row(b"x" * 70)
            + msg(b"N", b"SWARNING\0\0")
            + row(b"y")
            + complete(b"SELECT 2")
            + ready()
        )
        for out in (whole, pieces):
            owner = Owner()
            stream = TransactionStream(out.append, owner, names, 200, "app", None)
            owner.stream = stream
            stream.wanted["timezone"] = "SET TimeZone TO 'UTC'"
            stream.statements[b"s"] = b"SELECT 1\0\x00\x00"
            stream.feed_client(bind(b"s") + execute() + SYNC)
            stream.attach(FakeServer())  # type: ignore[arg-type]
            if out is whole:
                stream.feed_server(reply)
            else:
                points = sorted({c % (len(reply) + 1) for c in cuts})
                start = 0
                for point in [*points, len(reply)]:
                    if point > start:
                        stream.feed_server(reply[start:point])
                        start = point
            self.assertEqual(owner.releases, 1)
        self.assertEqual(b"".join(whole), b"".join(pieces))
        self.assertEqual(
            [k for k, _ in split(b"".join(whole))], [b"2", b"D", b"N", b"D", b"C", b"Z"]
        )


class AloneTests(SynchronousTestCase):
    """A Parse and Sync alone, from a client that holds no server (libpq's PQprepare)."""

    def setUp(self) -> None:
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")
        self.names = StatementNames()
        self.client: list[bytes] = []
        self.owner = Owner()

    def stream(self) -> TransactionStream:
        stream = TransactionStream(self.client.append, self.owner, self.names, 200, "app", None)
        self.owner.stream = stream
        return stream

    def test_a_statement_a_server_parsed_is_answered_without_a_server(self) -> None:
        first = self.stream()
        first.feed_client(parse(b"P_0", b"BEGIN") + SYNC)
        self.assertEqual(self.owner.wants, 1, "never parsed: it needs a server")
        server = FakeServer()
        first.attach(server)  # type: ignore[arg-type]
        first.feed_server(PARSE_OK + ready())
        self.client.clear()
        second = self.stream()
        second.feed_client(parse(b"P_0", b"BEGIN") + SYNC)
        self.assertEqual(self.owner.wants, 1, "answered by the pooler")
        self.assertEqual([k for k, _ in split(b"".join(self.client))], [b"1", b"Z"])
        self.assertIn(b"P_0", second.statements)

    def test_a_statement_that_failed_is_not_answered_alone(self) -> None:
        first = self.stream()
        first.feed_client(parse(b"P_0", b"SELECT nope") + SYNC)
        first.attach(FakeServer())  # type: ignore[arg-type]
        first.feed_server(m.error_response("42703", "no") + ready())
        second = self.stream()
        second.feed_client(parse(b"P_0", b"SELECT nope") + SYNC)
        self.assertEqual(self.owner.wants, 2)


class OrderTests(SynchronousTestCase):
    """Found by psycopg's pipeline mode and libpq 18 (the drivers' tests)."""

    def setUp(self) -> None:
        if not session_state.AVAILABLE:
            raise SkipTest("pglast is not installed")
        self.client: list[bytes] = []
        self.owner = Owner()
        self.stream = TransactionStream(
            self.client.append, self.owner, StatementNames(), 200, "app", None
        )
        self.owner.stream = self.stream

    def test_a_poolers_answer_follows_the_server_message_before_it(self) -> None:
        """Bind, Execute, Close(statement), Sync: CloseComplete after CommandComplete, at
        every cut of the server's answer."""
        names = StatementNames()
        reply = PARSE_OK + BIND_OK + row(b"1") + complete(b"SELECT 1") + ready()
        for cut in range(len(reply) + 1):
            self.client.clear()
            owner = Owner()
            clone = owner.stream = TransactionStream(
                self.client.append, owner, names, 200, "app", None
            )
            clone.statements[b"s1"] = b"select 1\0\x00\x00"
            clone.feed_client(bind(b"s1") + execute() + msg(b"C", b"Ss1\0") + SYNC)
            clone.attach(FakeServer())  # type: ignore[arg-type]
            clone.feed_server(reply[:cut])
            clone.feed_server(reply[cut:])
            kinds = [k for k, _ in split(b"".join(self.client))]
            self.assertEqual(kinds, [b"2", b"D", b"C", b"3", b"Z"], cut)

    def test_the_server_is_kept_until_the_sync(self) -> None:
        """Parse, Bind, Execute, Flush: the implicit transaction lasts until the Sync."""
        stream, server = self.stream, FakeServer()
        stream.feed_client(parse(b"", b"insert into t values (1)") + bind(b"") + execute())
        stream.feed_client(msg(b"H"))
        stream.attach(server)  # type: ignore[arg-type]
        stream.feed_server(PARSE_OK + BIND_OK + complete(b"INSERT 0 1"))
        self.assertEqual(self.owner.releases, 0)
        self.assertFalse(stream.in_sync)
        stream.feed_client(SYNC)
        stream.feed_server(ready())
        self.assertEqual(self.owner.releases, 1)

    def test_after_an_error_the_server_is_kept_until_the_sync(self) -> None:
        stream, server = self.stream, FakeServer()
        stream.feed_client(parse(b"", b"select 1/0") + bind(b"") + execute() + msg(b"H"))
        stream.attach(server)  # type: ignore[arg-type]
        stream.feed_server(PARSE_OK + m.error_response("22012", "division by zero"))
        self.assertEqual(self.owner.releases, 0)
        stream.feed_client(SYNC)
        stream.feed_server(ready())
        self.assertEqual(self.owner.releases, 1)
