"""``session/routed.py``'s ``RoutedStream`` with bytes in and bytes out, no socket.

Two legs record what they are sent; servers' replies are fed back as bytes.  The
classifier is the real one (pglast).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from pgpool_tw.cluster.classify import Classifier
from pgpool_tw.protocol import messages as m
from pgpool_tw.session.legs import Leg
from pgpool_tw.session.routed import RoutedStream, RoutingRules

IDLE, T, E = b"I", b"T", b"E"


def rfq(status: bytes = IDLE) -> bytes:
    return m.ready_for_query(status[0])


def complete(tag: str) -> bytes:
    return m.message(b"C", m.cstring(tag))


def parse(sql: str, name: str = "") -> bytes:
    return m.message(b"P", m.cstring(name) + m.cstring(sql) + b"\x00\x00")


def bind(statement: str = "", portal: str = "") -> bytes:
    return m.message(b"B", m.cstring(portal) + m.cstring(statement) + b"\x00\x00" * 3)


def execute(portal: str = "") -> bytes:
    return m.message(b"E", m.cstring(portal) + b"\x00\x00\x00\x00")


SYNC = b"S\x00\x00\x00\x04"


def lsn_question() -> bytes:
    return m.query("SELECT pg_current_wal_insert_lsn()")


def lsn_answer(lsn: str) -> bytes:
    row = m.message(b"D", b"\x00\x01" + len(lsn).to_bytes(4, "big") + lsn.encode())
    return row + complete("SELECT 1") + rfq()


PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"


class Harness:
    def __init__(self, lsn_known: bool = True, **rules: Any) -> None:
        self.sent: dict[int, list[bytes]] = {0: [], 1: []}
        self.client: list[bytes] = []
        self.broken: list[str] = []
        self.primary = Leg(0, self.sent[0].append, m.IDLE, {})
        self.lb = Leg(1, self.sent[1].append, m.IDLE, {})
        options: dict[str, Any] = {"read_your_writes": False}
        options.update(rules)
        self.stream = RoutedStream(
            self.primary,
            self.lb,
            self.client.append,
            RoutingRules(
                Classifier(known_read_only=frozenset({"count", "lower"})).classify,
                lambda command, status: b"local" + rfq(bytes((status,))),
                **options,
            ),
            self.broken.append,
        )

    def to(self, node: int) -> bytes:
        out = b"".join(self.sent[node])
        self.sent[node].clear()
        return out

    def answer(self, node: int, data: bytes) -> None:
        (self.primary if node == 0 else self.lb).feed_server(data)

    def seen(self) -> bytes:
        out = b"".join(self.client)
        self.client.clear()
        return out


def query(sql: str) -> bytes:
    return m.query(sql)


class SimpleQueries(unittest.TestCase):
    def test_reads_and_writes_go_to_their_nodes(self) -> None:
        h = Harness()
        self.assertEqual(h.stream.feed_client(query("SELECT * FROM t")), -1)
        self.assertEqual(h.to(1), query("SELECT * FROM t"))
        h.answer(1, complete("SELECT 0") + rfq())
        self.assertEqual(h.seen(), complete("SELECT 0") + rfq())
        h.stream.feed_client(query("INSERT INTO t VALUES (1)"))
        self.assertEqual(h.to(0), query("INSERT INTO t VALUES (1)"))
        self.assertEqual(h.to(1), b"")

    def test_pipelined_replies_reach_the_client_in_the_order_sent(self) -> None:
        h = Harness()
        h.stream.feed_client(query("SELECT 1 FROM t") + query("DELETE FROM t"))
        self.assertEqual(h.to(1), query("SELECT 1 FROM t"))
        self.assertEqual(h.to(0), query("DELETE FROM t"))
        h.answer(0, complete("DELETE 3") + rfq())  # the primary answers first
        self.assertEqual(h.seen(), b"")
        h.answer(1, complete("SELECT 1"))
        self.assertEqual(h.seen(), complete("SELECT 1"))
        h.answer(1, rfq())
        self.assertEqual(h.seen(), rfq() + complete("DELETE 3") + rfq())
        self.assertTrue(h.stream.in_sync)

    def test_session_state_goes_to_both_and_the_client_sees_one_answer(self) -> None:
        h = Harness()
        h.stream.feed_client(query("SET search_path TO s"))
        self.assertEqual(h.to(0), query("SET search_path TO s"))
        self.assertEqual(h.to(1), query("SET search_path TO s"))
        h.answer(1, complete("SET") + rfq())
        h.answer(0, complete("SET") + m.parameter_status("search_path", "s"))
        self.assertEqual(h.seen(), complete("SET") + m.parameter_status("search_path", "s"))
        h.answer(0, rfq())
        self.assertEqual(h.seen(), rfq())
        self.assertEqual(h.primary.params, {"search_path": "s"})

    def test_a_read_waits_for_nothing_on_the_primary(self) -> None:
        """A read behind an unanswered primary statement goes to the primary too."""
        h = Harness()
        h.stream.feed_client(query("BEGIN") + query("SELECT 1 FROM t"))
        self.assertEqual(h.to(0), query("BEGIN") + query("SELECT 1 FROM t"))
        self.assertEqual(h.to(1), b"")

    def test_a_writing_transaction_never_touches_the_standby(self) -> None:
        """BEGIN waits for a read to need the standby: TPC-B's transactions never do."""
        h = Harness()
        for sql, tag, status in (
            ("BEGIN", "BEGIN", T),
            ("UPDATE t SET a = 1", "UPDATE 1", T),
            ("SELECT a FROM t", "SELECT 1", T),
            ("END", "COMMIT", IDLE),
        ):
            h.stream.feed_client(query(sql))
            self.assertEqual(h.to(0), query(sql))
            h.answer(0, complete(tag) + rfq(status))
        self.assertEqual(h.to(1), b"")
        self.assertTrue(h.stream.in_sync)

    def test_a_reading_transaction_starts_on_the_standby_when_it_reads(self) -> None:
        h = Harness()
        h.stream.feed_client(query("BEGIN ISOLATION LEVEL REPEATABLE READ"))
        h.answer(0, complete("BEGIN") + rfq(T))
        self.assertEqual(h.to(0), query("BEGIN ISOLATION LEVEL REPEATABLE READ"))
        self.assertEqual(h.to(1), b"")
        h.stream.feed_client(query("SELECT a FROM t"))
        begin = query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        self.assertEqual(h.to(1), begin + query("SELECT a FROM t"))
        h.answer(1, complete("BEGIN") + rfq(T) + complete("SELECT 0") + rfq(T))
        self.assertEqual(h.seen(), complete("BEGIN") + rfq(T) + complete("SELECT 0") + rfq(T))
        h.stream.feed_client(query("COMMIT"))
        self.assertEqual((h.to(0), h.to(1)), (query("COMMIT"), query("COMMIT")))

    def test_a_transaction_that_read_the_primary_keeps_reading_it(self) -> None:
        """Never an older view later in the same transaction: once a read of the open
        transaction went to the primary (here: sent behind its BEGIN), the rest follow."""
        h = Harness()
        h.stream.feed_client(query("BEGIN") + query("SELECT 1 FROM t"))
        h.answer(0, complete("BEGIN") + rfq(T) + complete("SELECT 1") + rfq(T))
        h.stream.feed_client(query("SELECT 2 FROM t"))
        self.assertEqual(
            h.to(0), query("BEGIN") + query("SELECT 1 FROM t") + query("SELECT 2 FROM t")
        )
        self.assertEqual(h.to(1), b"")
        h.answer(0, complete("SELECT 1") + rfq(T))
        h.stream.feed_client(query("COMMIT"))
        h.answer(0, complete("COMMIT") + rfq())
        h.to(0)
        h.stream.feed_client(query("SELECT 3 FROM t"))
        self.assertEqual(h.to(1), query("SELECT 3 FROM t"))  # a new transaction balances

    def test_dml_adaptive_keeps_only_the_written_tables_on_the_primary(self) -> None:
        h = Harness(on_write_mode="dml_adaptive")
        h.stream.feed_client(query("BEGIN"))
        h.answer(0, complete("BEGIN") + rfq(T))
        h.stream.feed_client(query("UPDATE a SET x = 1"))
        h.answer(0, complete("UPDATE 1") + rfq(T))
        h.to(0), h.seen()
        h.stream.feed_client(query("SELECT x FROM b"))  # not written: the standby joins
        self.assertEqual(h.to(1), query("BEGIN") + query("SELECT x FROM b"))
        h.answer(1, complete("BEGIN") + rfq(T) + complete("SELECT 0") + rfq(T))
        h.stream.feed_client(query("SELECT x FROM public.a"))  # written in this transaction
        self.assertEqual((h.to(0), h.to(1)), (query("SELECT x FROM public.a"), b""))

    def test_dml_adaptive_after_a_write_of_unknown_target(self) -> None:
        """A write the classifier cannot pin to a table (a volatile function) keeps every
        later read of the transaction on the primary."""
        h = Harness(on_write_mode="dml_adaptive")
        h.stream.feed_client(query("BEGIN"))
        h.answer(0, complete("BEGIN") + rfq(T))
        h.stream.feed_client(query("SELECT my_volatile()"))
        h.answer(0, complete("SELECT 1") + rfq(T))
        h.to(0)
        h.stream.feed_client(query("SELECT x FROM b"))
        self.assertEqual((h.to(0), h.to(1)), (query("SELECT x FROM b"), b""))

    def test_after_a_write_the_transaction_stays_on_the_primary(self) -> None:
        h = Harness()
        h.stream.feed_client(query("BEGIN"))
        h.answer(0, complete("BEGIN") + rfq(T))
        h.stream.feed_client(query("SELECT 1 FROM t"))
        self.assertEqual(h.to(1), query("BEGIN") + query("SELECT 1 FROM t"))
        h.answer(1, complete("BEGIN") + rfq(T) + complete("SELECT 1") + rfq(T))
        h.stream.feed_client(query("UPDATE t SET a = 1"))
        h.answer(0, complete("UPDATE 1") + rfq(T))
        h.stream.feed_client(query("SELECT 1 FROM t"))
        self.assertEqual(
            h.to(0), query("BEGIN") + query("UPDATE t SET a = 1") + query("SELECT 1 FROM t")
        )
        self.assertEqual(h.to(1), b"")

    def test_a_failed_read_aborts_and_commit_becomes_rollback_elsewhere(self) -> None:
        h = Harness(on_write_mode="off")
        h.stream.feed_client(query("BEGIN"))
        h.answer(0, complete("BEGIN") + rfq(T))
        h.stream.feed_client(query("SELECT 1/0 FROM t"))
        error = m.error_response("22012", "division by zero", severity="ERROR")
        h.answer(1, complete("BEGIN") + rfq(T) + error + rfq(E))
        self.assertEqual(h.seen(), complete("BEGIN") + rfq(T) + error + rfq(E))
        h.to(0), h.to(1)
        h.stream.feed_client(query("INSERT INTO t VALUES (1)"))
        self.assertEqual(h.to(1), query("INSERT INTO t VALUES (1)"))  # refused there
        self.assertEqual(h.to(0), b"")
        h.answer(1, m.error_response("25P02", "aborted", severity="ERROR") + rfq(E))
        h.stream.feed_client(query("COMMIT"))
        self.assertEqual(h.to(0), query("ROLLBACK"))
        self.assertEqual(h.to(1), query("COMMIT"))
        self.assertEqual(h.stream.status, m.IN_FAILED_TRANSACTION)

    def test_session_state_the_standby_refused_ends_load_balancing(self) -> None:
        h = Harness()
        h.stream.feed_client(query("SET x.y = 1"))
        h.answer(0, complete("SET") + rfq())
        h.answer(1, m.error_response("XX000", "no", severity="ERROR") + rfq())
        self.assertEqual(h.seen(), complete("SET") + rfq())
        h.to(0), h.to(1)
        h.stream.feed_client(query("SELECT 1 FROM t"))
        self.assertEqual(h.to(0), query("SELECT 1 FROM t"))
        self.assertEqual(h.to(1), b"")

    def test_a_serializable_transaction_stays_on_the_primary(self) -> None:
        """A standby refuses SERIALIZABLE: that transaction is the primary's alone."""
        h = Harness()
        h.stream.feed_client(query("BEGIN ISOLATION LEVEL SERIALIZABLE"))
        h.answer(0, complete("BEGIN") + rfq(T))
        h.stream.feed_client(query("SELECT 1 FROM t"))
        self.assertEqual(
            h.to(0), query("BEGIN ISOLATION LEVEL SERIALIZABLE") + query("SELECT 1 FROM t")
        )
        h.answer(0, complete("SELECT 1") + rfq(T))
        h.stream.feed_client(query("COMMIT"))
        h.answer(0, complete("COMMIT") + rfq())
        self.assertEqual((h.to(0), h.to(1)), (query("COMMIT"), b""))
        h.seen()
        h.stream.feed_client(query("SELECT 1 FROM t"))
        self.assertEqual(h.to(1), query("SELECT 1 FROM t"))  # balanced again

    def test_show_pool_nodes_is_answered_in_order(self) -> None:
        h = Harness()
        h.stream.feed_client(query("SELECT 1 FROM t") + query("SHOW pool_nodes"))
        self.assertEqual(h.seen(), b"")
        h.answer(1, complete("SELECT 1") + rfq())
        self.assertEqual(h.seen(), complete("SELECT 1") + rfq() + b"local" + rfq())

    def test_terminate_is_never_forwarded(self) -> None:
        h = Harness()
        self.assertEqual(h.stream.feed_client(query("SELECT 1 FROM t") + m.terminate()), 0)
        self.assertEqual(h.to(1), query("SELECT 1 FROM t"))
        self.assertEqual(h.to(0), b"")

    def test_a_bad_length_breaks_the_stream(self) -> None:
        h = Harness()
        h.stream.feed_client(b"Q\x00\x00\x00\x02")
        self.assertEqual(len(h.broken), 1)
        self.assertEqual(h.to(0) + h.to(1), b"")


class Extended(unittest.TestCase):
    def test_a_batch_with_a_write_goes_to_the_primary_whole(self) -> None:
        h = Harness()
        batch = (
            parse("SELECT 1 FROM t")
            + bind()
            + execute()
            + parse("INSERT INTO t VALUES (1)")
            + bind()
            + execute()
            + SYNC
        )
        h.stream.feed_client(batch)
        self.assertEqual(h.to(0), batch)
        self.assertEqual(h.to(1), b"")

    def test_a_read_batch_goes_to_the_load_balancing_node(self) -> None:
        h = Harness()
        batch = parse("SELECT count(*) FROM t") + bind() + execute() + SYNC
        h.stream.feed_client(batch)
        self.assertEqual(h.to(1), batch)
        h.answer(1, PARSE_COMPLETE + BIND_COMPLETE + complete("SELECT 1") + rfq())
        self.assertEqual(h.seen(), PARSE_COMPLETE + BIND_COMPLETE + complete("SELECT 1") + rfq())

    def test_named_statements_are_parsed_on_every_node(self) -> None:
        h = Harness()
        h.stream.feed_client(parse("INSERT INTO t VALUES ($1)", "s1") + SYNC)
        self.assertEqual(h.to(0), parse("INSERT INTO t VALUES ($1)", "s1") + SYNC)
        self.assertEqual(h.to(1), parse("INSERT INTO t VALUES ($1)", "s1") + SYNC)
        h.answer(1, PARSE_COMPLETE + rfq())
        h.answer(0, PARSE_COMPLETE + rfq())
        self.assertEqual(h.seen(), PARSE_COMPLETE + rfq())
        h.stream.feed_client(parse("SELECT lower(a) FROM t", "s2") + SYNC)
        h.answer(0, PARSE_COMPLETE + rfq())
        h.answer(1, PARSE_COMPLETE + rfq())
        h.seen(), h.to(0), h.to(1)
        h.stream.feed_client(bind("s2") + execute() + SYNC)
        self.assertEqual(h.to(1), bind("s2") + execute() + SYNC)
        h.stream.feed_client(bind("s1") + execute() + SYNC)
        self.assertEqual(h.to(0), bind("s1") + execute() + SYNC)

    def test_a_statement_the_standby_cannot_parse_runs_on_the_primary(self) -> None:
        """A table just created: read-your-writes leads with the primary, the standby
        (not there yet) refuses the Parse, so the statement stays on the primary."""
        h = Harness(read_your_writes=True, lb_replayed=lambda: 1 << 62)
        h.stream.feed_client(query("CREATE TABLE t2 (a int)"))
        h.answer(0, complete("CREATE TABLE") + rfq())
        self.assertEqual(h.to(0), query("CREATE TABLE t2 (a int)"))
        h.stream.feed_client(parse("SELECT count(*) FROM t2", "s") + SYNC)
        # The first read after the commit asks where the primary's WAL is.
        self.assertEqual(h.to(0), lsn_question() + parse("SELECT count(*) FROM t2", "s") + SYNC)
        h.answer(0, lsn_answer("0/3000060") + PARSE_COMPLETE + rfq())
        h.answer(1, m.error_response("42P01", "no t2 yet", severity="ERROR") + rfq())
        self.assertEqual(h.seen(), complete("CREATE TABLE") + rfq() + PARSE_COMPLETE + rfq())
        h.to(1)
        h.stream.feed_client(bind("s") + execute() + SYNC)
        self.assertEqual(h.to(0), bind("s") + execute() + SYNC)
        self.assertEqual(h.to(1), b"")
        h.answer(0, BIND_COMPLETE + complete("SELECT 1") + rfq())
        h.stream.feed_client(query("SELECT 1 FROM t"))
        self.assertEqual(h.to(1), query("SELECT 1 FROM t"))  # the replica has replayed


STATEMENTS = [
    query("SELECT 1 FROM t"),
    query("INSERT INTO t VALUES (1)"),
    query("SET x.y = 1"),
    query("BEGIN"),
    query("COMMIT"),
    parse("SELECT count(*) FROM t") + bind() + execute() + SYNC,
    parse("UPDATE t SET a = 1") + bind() + execute() + SYNC,
    parse("SELECT 2 FROM t", "n") + SYNC,
    m.message(b"d", b"copy bytes"),
]


class CutAnywhere(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from(STATEMENTS), min_size=1, max_size=8), st.data())
    def test_cuts_do_not_change_what_each_node_receives(
        self, items: list[bytes], data: Any
    ) -> None:
        stream = b"".join(items)
        whole = Harness()
        whole.stream.feed_client(stream)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        cut = Harness()
        for piece in pieces:
            cut.stream.feed_client(piece)
        # Each batch's first message decides it, so every node gets the same bytes.
        self.assertEqual(cut.to(0), whole.to(0))
        self.assertEqual(cut.to(1), whole.to(1))
        self.assertEqual(whole.stream.in_sync, cut.stream.in_sync)


class WriteModeTests(unittest.TestCase):
    """disable_load_balance_on_write across transactions: where a later read goes."""

    def later_read(self, mode: str) -> int:
        """A transaction that writes, then a new one that reads: the node it reads."""
        h = Harness(on_write_mode=mode)
        for sql, tag, status in (
            ("BEGIN", "BEGIN", T),
            ("UPDATE t SET a = 1", "UPDATE 1", T),
            ("COMMIT", "COMMIT", IDLE),
            ("BEGIN", "BEGIN", T),
        ):
            h.stream.feed_client(query(sql))
            h.answer(0, complete(tag) + rfq(status))
        h.to(0), h.to(1)
        h.stream.feed_client(query("SELECT a FROM t"))
        return 0 if h.to(0) else 1

    def test_trans_transaction_keeps_later_transactions_on_the_primary(self) -> None:
        self.assertEqual(self.later_read("trans_transaction"), 0)

    def test_transaction_balances_the_next_transaction(self) -> None:
        self.assertEqual(self.later_read("transaction"), 1)

    def test_off_balances_even_after_writes(self) -> None:
        self.assertEqual(self.later_read("off"), 1)

    def test_always_keeps_the_session_on_the_primary(self) -> None:
        self.assertEqual(self.later_read("always"), 0)
