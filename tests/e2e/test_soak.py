"""scripts/soak's engine (pgpool_tw_dev/soak): the ledger's check of rows against
acknowledged commits on made-up figures, and one short real soak with one fault of each
kind through a real ``twistd pgpool``."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pgpool_tw_dev.soak.faults import KINDS
from pgpool_tw_dev.soak.ledger import BenchRun, Ledger, verify
from pgpool_tw_dev.soak.run import Options, report, soak
from tests.support import skip_unless_postgres


def ledger_with(acked: int, doubt: int, aborted: int) -> tuple[Ledger, list[int], list[int]]:
    ledger = Ledger()
    for row_id in ledger.new_ids(acked):
        ledger.ack([row_id])
    doubtful = ledger.new_ids(doubt)
    ledger.doubt(doubtful)
    killed = ledger.new_ids(aborted)
    ledger.abort(killed)
    return ledger, doubtful, killed


class VerifyTests(SynchronousTestCase):
    def test_every_acknowledged_row_found_is_ok(self) -> None:
        """All acknowledged rows there, in-doubt ones there or not: OK, counted."""
        ledger, doubtful, _ = ledger_with(10, 2, 3)
        verdict = verify(ledger, set(range(1, 11)) | {doubtful[0]}, {})
        self.assertTrue(verdict.ok)
        self.assertEqual((verdict.acked_rows, verdict.rows_found), (10, 11))
        self.assertEqual(verdict.doubt_committed, 1)

    def test_a_lost_commit_fails(self) -> None:
        ledger, _, _ = ledger_with(10, 0, 0)
        verdict = verify(ledger, set(range(1, 10)), {})
        self.assertFalse(verdict.ok)
        self.assertEqual(verdict.missing, [10])

    def test_a_killed_transactions_row_fails(self) -> None:
        """A row of a client killed before its COMMIT must not be there."""
        ledger, _, killed = ledger_with(5, 0, 2)
        verdict = verify(ledger, set(range(1, 6)) | {killed[1]}, {})
        self.assertFalse(verdict.ok)
        self.assertEqual(verdict.aborted_found, [killed[1]])

    def test_an_id_still_open_counts_as_in_doubt(self) -> None:
        """A client stuck in its transaction: its row may be there."""
        ledger = Ledger()
        stuck = ledger.new_ids(1)
        self.assertTrue(verify(ledger, set(stuck), {}).ok)

    def test_pgbench_rows_between_processed_and_aborted_clients(self) -> None:
        ledger = Ledger()
        ledger.bench(BenchRun(1, processed=100, aborted_clients=2, summary=True))
        ledger.bench(BenchRun(2, killed=True))
        self.assertTrue(verify(ledger, set(), {1: 102, 2: 7}).ok)
        self.assertEqual(verify(ledger, set(), {1: 102, 2: 7}).bench_unchecked, [2])
        self.assertFalse(verify(ledger, set(), {1: 99}).ok)
        self.assertFalse(verify(ledger, set(), {1: 103}).ok)
        self.assertFalse(verify(ledger, set(), {1: 100, 3: 1}).ok)


class ShortSoakTests(SynchronousTestCase):
    def test_one_fault_of_each_kind(self) -> None:
        """A 12-second soak runs every kind of fault once; each is followed by clean
        service, every acknowledged row is there and no killed client's row is, no
        client is stuck, and the report says so."""
        skip_unless_postgres()
        options = Options(
            minutes=0.2,
            seed=7,
            gap=(0.3, 0.6),
            warmup=2.0,
            settle=3.0,
            auth_timeout=1,
            flood_size=50,
        )
        said: list[str] = []
        outcome = soak(options, said.append)
        text = report(outcome)
        self.assertEqual({f.kind for f in outcome.faults}, set(KINDS), text)
        self.assertEqual([f for f in outcome.faults if f.clean_after is None], [], text)
        assert outcome.verdict is not None, text
        self.assertTrue(outcome.verdict.ok, text)
        self.assertGreater(outcome.verdict.acked_rows, 0, text)
        self.assertEqual(outcome.stuck, [], text)
        self.assertEqual(outcome.pooler_died, "", text)
        self.assertIsNotNone(outcome.end, text)
        for kind in KINDS:
            self.assertIn(f"| {kind} |", text)
