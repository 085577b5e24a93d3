"""SQL PREPARE / EXECUTE / DEALLOCATE in transaction pooling, with psycopg and a real
PostgreSQL: each client's statements follow it across servers under its own names, and
nothing pins it.

Two servers: a server given back is the first one handed out again, so a third client
that holds one in a transaction, then commits, moves the others from one to the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import asyncpg
import psycopg
from twisted.internet.defer import Deferred, inlineCallbacks

from pgpool_tw.service import PgpoolService
from tests.integration.harness import PoolerTestCase

Steps = Generator[Deferred[Any], Any, None]


def _open(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=20, **kwargs)


def _row(conn: psycopg.Connection[Any], sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


class SqlPrepareTests(PoolerTestCase):
    def start(self) -> tuple[PgpoolService, str]:
        service = self.start_pooler(pool_mode="transaction", default_pool_size=2)
        user, db = self.role_and_db()
        return service, self.dsn(service, user, db)

    def pinned(self, service: PgpoolService) -> list[tuple[str, ...]]:
        return [client.reasons for client in service.snapshot().pinned]

    @inlineCallbacks
    def test_two_clients_one_name_two_statements(self) -> Steps:
        """a and b prepare q, each its own; c holds a server now and then, so a and b move
        between the two servers and take turns on each.  Every EXECUTE runs its client's
        q: by simple queries, and by the statement psycopg prepares of a text run five
        times (a protocol-level "EXECUTE q(0)")."""
        service, dsn = self.start()

        def run() -> dict[str, Any]:
            a, b, c = _open(dsn), _open(dsn), _open(dsn)
            try:
                a.execute("prepare q (int) as select $1 + 1000, pg_backend_pid()")
                b.execute("prepare q (int) as select $1 + 2000, pg_backend_pid()")
                results: list[tuple[str, int]] = []
                pids: dict[str, set[int]] = {"a": set(), "b": set()}
                pins = []
                for round_ in range(12):
                    if round_ % 3 == 1:
                        c.execute("begin")
                        _row(c, "select 1")
                    elif round_ % 3 == 2:
                        c.execute("commit")
                    for name, conn in (("a", a), ("b", b)):
                        value, pid = _row(conn, f"execute q({round_})")
                        results.append((name, value))
                        pids[name].add(pid)
                        value, pid = _row(conn, "execute q(0)")
                        results.append((name, value))
                        pids[name].add(pid)
                    pins.append(self.pinned(service))
                return {"results": results, "pids": pids, "pins": pins}
            finally:
                for conn in (a, b, c):
                    conn.close()

        got = yield self.in_thread(run)
        expected = []
        for round_ in range(12):
            for name, base in (("a", 1000), ("b", 2000)):
                expected += [(name, round_ + base), (name, base)]
        self.assertEqual(got["results"], expected)
        self.assertEqual(len(got["pids"]["a"]), 2, f"a never moved: {got['pids']}")
        self.assertEqual(len(got["pids"]["b"]), 2, f"b never moved: {got['pids']}")
        self.assertEqual(got["pins"], [[]] * 12)
        self.assertEqual(self.pinned(service), [])

    @inlineCallbacks
    def test_a_clients_statement_is_never_anothers(self) -> Steps:
        """b never prepared q: its EXECUTE fails as on a direct connection, even on the
        server where a's q is; its own PREPARE of q does not fail for a's."""
        service, dsn = self.start()

        def run() -> dict[str, Any]:
            a, b = _open(dsn), _open(dsn)
            try:
                a.execute("prepare q as select 'a', pg_backend_pid()")
                a_pid = _row(a, "execute q")[1]
                try:
                    b.execute("execute q")
                    execute = "ran"
                except psycopg.errors.InvalidSqlStatementName as error:
                    execute = error.sqlstate or ""
                b.execute("prepare q as select 'b', pg_backend_pid()")
                b_row = _row(b, "execute q")
                a_row = _row(a, "execute q")
                return {"execute": execute, "b": b_row, "a": a_row, "a_pid": a_pid}
            finally:
                a.close()
                b.close()

        got = yield self.in_thread(run)
        self.assertEqual(got["execute"], "26000")
        self.assertEqual(got["b"], ("b", got["a_pid"]), "on the server a left its q on")
        self.assertEqual(got["a"][0], "a")
        self.assertEqual(self.pinned(service), [])

    @inlineCallbacks
    def test_deallocate_and_errors_are_postgresqls(self) -> Steps:
        service, dsn = self.start()

        def run() -> list[str]:
            a, c = _open(dsn), _open(dsn)
            seen = []
            try:
                try:
                    a.execute("prepare q as select nope")
                except psycopg.errors.UndefinedColumn:
                    seen.append("bad prepare refused")
                a.execute("prepare q as select 'q'")
                try:
                    a.execute("prepare q as select 'again'")
                except psycopg.errors.DuplicatePreparedStatement:
                    seen.append("exists")
                c.execute("begin")  # a moves to the other server
                _row(c, "select 1")
                seen.append(_row(a, "execute q")[0])
                c.execute("commit")
                a.execute("deallocate q")
                try:
                    a.execute("execute q")
                except psycopg.errors.InvalidSqlStatementName:
                    seen.append("gone")
                a.execute("prepare q as select 'new'")
                seen.append(_row(a, "execute q")[0])
                a.execute("deallocate all")
                try:
                    a.execute("execute q")
                except psycopg.errors.InvalidSqlStatementName:
                    seen.append("all gone")
                return seen
            finally:
                a.close()
                c.close()

        seen = yield self.in_thread(run)
        self.assertEqual(seen, ["bad prepare refused", "exists", "q", "gone", "new", "all gone"])
        self.assertEqual(self.pinned(service), [])

    @inlineCallbacks
    def test_a_pipeline_finds_all_its_statements(self) -> Steps:
        """psycopg's pipeline mode: EXECUTEs by the extended protocol, several before one
        Sync, on a server the client's statements were never prepared on."""
        if not psycopg.Pipeline.is_supported():
            self.skipTest("libpq has no pipeline mode")
        service, dsn = self.start()

        def run() -> list[Any]:
            a, c = _open(dsn), _open(dsn)
            try:
                a.execute("prepare one as select 1")
                a.execute("prepare two as select 2")
                c.execute("begin")  # a moves to the other server
                _row(c, "select 1")
                with a.pipeline():
                    first = a.execute("execute one")
                    second = a.execute("execute two")
                rows = [first.fetchone(), second.fetchone()]
                c.execute("commit")
                return rows
            finally:
                a.close()
                c.close()

        rows = yield self.in_thread(run)
        self.assertEqual(rows, [(1,), (2,)])
        self.assertEqual(self.pinned(service), [])

    @inlineCallbacks
    def test_inside_a_transaction_block(self) -> Steps:
        """The statement put on a server inside the client's transaction stays there when
        the transaction rolls back (as PostgreSQL's PREPARE does)."""
        service, dsn = self.start()

        def run() -> list[Any]:
            a, c = _open(dsn), _open(dsn)
            try:
                a.execute("prepare q as select 'q', pg_backend_pid()")
                c.execute("begin")  # a moves to the other server
                _row(c, "select 1")
                a.execute("begin")
                first = _row(a, "execute q")
                a.execute("rollback")
                a.execute("begin")  # c still holds the other server: the same one
                second = _row(a, "execute q")
                a.execute("commit")
                c.execute("commit")
                return [first, second]
            finally:
                a.close()
                c.close()

        first, second = yield self.in_thread(run)
        self.assertEqual(first[0], "q")
        self.assertEqual(second, first, "the same server, which kept q")
        self.assertEqual(self.pinned(service), [])

    @inlineCallbacks
    def test_asyncpg(self) -> Steps:
        """asyncpg prepares every statement it fetches with (Parse of "EXECUTE q", then
        Bind): two clients, one name, two statements, taking turns while a third holds a
        server now and then, so that they move between the servers."""
        service, dsn = self.start()
        user, db = self.role_and_db()

        async def main() -> list[tuple[str, int]]:
            conns = [
                await asyncpg.connect(host="127.0.0.1", port=service.port, user=user, database=db)
                for _ in range(3)
            ]
            a, b, holder = conns
            try:
                await a.execute("prepare q (int) as select $1 + 1000")
                await b.execute("prepare q (int) as select $1 + 2000")
                values = []
                for round_ in range(8):
                    if round_ % 2:
                        await holder.execute("begin; select 1")
                    for name, conn in (("a", a), ("b", b)):
                        values.append((name, await conn.fetchval(f"execute q({round_})")))
                        values.append((name, await conn.fetchval("execute q(0)")))
                    if round_ % 2:
                        await holder.execute("commit")
                return values
            finally:
                for conn in conns:
                    await conn.close()

        def run() -> list[tuple[str, int]]:
            return asyncio.run(main())

        values = yield self.in_thread(run)
        expected = []
        for round_ in range(8):
            for name, base in (("a", 1000), ("b", 2000)):
                expected += [(name, round_ + base), (name, base)]
        self.assertEqual(values, expected)
        self.assertEqual(self.pinned(service), [])
