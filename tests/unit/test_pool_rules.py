"""Pure rules of the pool and the relay's login step: no sockets, no reactor."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw.config.settings import Config
from pgpool_tw.pool.pool import expired
from pgpool_tw.pool.reset import reset_batch, reset_queries
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.messages import without_channel_binding


def _sasl(*names: bytes) -> bytes:
    body = m.INT32.pack(m.AUTH_SASL) + b"".join(n + b"\0" for n in names) + b"\0"
    return m.message(b"R", body)


class ResetQueriesTests(SynchronousTestCase):
    def test_leading_abort_skipped_when_idle(self) -> None:
        """Outside a transaction a leading ABORT/ROLLBACK is dropped; the rest stays in order."""
        configured = ("ABORT", " rollback ", "DISCARD ALL", "ABORT")
        self.assertEqual(reset_queries(configured, m.IDLE), ["DISCARD ALL", "ABORT"])

    def test_abort_kept_inside_a_transaction(self) -> None:
        """In or after a failed transaction every configured statement is sent."""
        for status in (m.IN_TRANSACTION, m.IN_FAILED_TRANSACTION):
            self.assertEqual(
                reset_queries(("ABORT", "DISCARD ALL"), status), ["ABORT", "DISCARD ALL"]
            )

    def test_empty_list_stays_empty(self) -> None:
        """An empty reset_query_list sends nothing."""
        self.assertEqual(reset_queries((), m.IDLE), [])


class ResetBatchTests(SynchronousTestCase):
    def test_messages_of_the_queries_to_run(self) -> None:
        """The batch holds one Query message per statement reset_queries keeps, in order."""
        configured = ("ABORT", "DISCARD ALL")
        self.assertEqual(reset_batch(configured, m.IDLE), (1, m.query("DISCARD ALL")))
        self.assertEqual(
            reset_batch(configured, m.IN_FAILED_TRANSACTION),
            (2, m.query("ABORT") + m.query("DISCARD ALL")),
        )

    def test_nothing_to_run(self) -> None:
        """An empty reset_query_list gives an empty batch."""
        self.assertEqual(reset_batch((), m.IDLE), (0, b""))


class ChannelBindingTests(SynchronousTestCase):
    def test_plus_removed(self) -> None:
        """SCRAM-SHA-256-PLUS is taken out of a relayed AuthenticationSASL; the rest stays."""
        raw = _sasl(b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256")
        self.assertEqual(without_channel_binding(raw), _sasl(b"SCRAM-SHA-256"))

    def test_other_requests_untouched(self) -> None:
        """An md5 request, a SASLContinue and a request without -PLUS pass unchanged."""
        md5 = m.message(b"R", m.INT32.pack(m.AUTH_MD5) + b"salt")
        cont = m.message(b"R", m.INT32.pack(m.AUTH_SASL_CONTINUE) + b"r=abc")
        plain = _sasl(b"SCRAM-SHA-256")
        for raw in (md5, cont, plain):
            self.assertEqual(without_channel_binding(raw), raw)


class ExpiredTests(SynchronousTestCase):
    """pool.expired: the one life-time rule for idle and warm-parked servers."""

    def test_connection_life_time_counts_from_idle(self) -> None:
        """An idle server past connection_life_time must close; before it, it may stay."""
        config = Config(connection_life_time=10, child_life_time=0)
        self.assertEqual(expired(config, 109.0, 100.0, None), "")
        self.assertEqual(expired(config, 110.0, 100.0, None), "connection_life_time")

    def test_child_life_time_counts_from_the_last_client(self) -> None:
        """child_life_time counts from the key's last client, and never while one has it."""
        config = Config(connection_life_time=0, child_life_time=30)
        self.assertEqual(expired(config, 200.0, 100.0, None), "")
        self.assertEqual(expired(config, 200.0, 100.0, 171.0), "")
        self.assertEqual(expired(config, 200.0, 100.0, 170.0), "child_life_time")

    def test_zero_turns_each_off(self) -> None:
        """0 for both settings keeps any idle server."""
        self.assertEqual(
            expired(Config(connection_life_time=0, child_life_time=0), 1e9, 0.0, 0.0), ""
        )
