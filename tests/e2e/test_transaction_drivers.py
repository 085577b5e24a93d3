"""Real drivers with their statement caches through ``twistd -n pgpool`` in transaction mode.

Issue #18's acceptance: asyncpg (which prepares every statement it runs), psycopg async
(automatic prepare after ``prepare_threshold`` uses, pipeline mode) and the PostgreSQL
JDBC driver (server-side prepare after ``prepareThreshold`` uses) work with no client
setting.  Each test runs more clients (``CLIENTS``) than the pool has servers
(``SERVERS``), so a client's named statements run on servers that never saw the client
prepare them; the pooler must prepare them there under its own names.

What proves it, per driver run: every result is the one the client's own arguments give; no
driver raised; PostgreSQL itself (``pg_stat_activity``, asked directly, never through the
pooler) never shows more than ``SERVERS`` connections of the test's role, so the clients
really shared servers; the same prepared statement answered one client from more than
one backend pid, so statements really moved between servers; and the servers hold the
statement's text under the pooler's name (``pg_prepared_statements``), so the driver
really used a named statement.  (The reset test proves its pins end instead: clients
pinning in turn on fewer servers would wait past query_wait_timeout otherwise.)

The last tests send, with the project's own ``RawClient``, the message sequences cut down
from what psycopg's pipeline mode sends (a Close amid a pipeline; a Flush, with or without
an error before it, and no Sync yet), so a fault a driver finds is pinned to one exchange.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import psycopg
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pgpool_tw.protocol import messages as m
from tests.e2e.pooler import PoolerProcess
from tests.integration.harness import RawClient
from tests.support import shared_postgres, skip_unless_postgres, unique_name

try:
    import asyncpg
except ImportError:  # pragma: no cover - the test extra installs it
    asyncpg = None

#: Concurrent clients per test, and the server connections they share.
CLIENTS = 24
SERVERS = 3
#: Times each client runs its statements (well past psycopg's and JDBC's default of 5).
ROUNDS = 12
#: A client that waits this long for a server gets an error, not a hang: a pin that is
#: never released fails the test instead of stalling it.
QUERY_WAIT_TIMEOUT = 10
#: How long one driver run may take before it counts as a hang (a run takes about a
#: second; a reply the driver waits for in vain hangs it).
RUN_TIMEOUT = 20.0

#: The statement every client prepares and runs in each round; pg_backend_pid() tells
#: which server answered.
SUM_SQL = "select $1::int + $2::int as total, pg_backend_pid() as pid"
PSYCOPG_SUM_SQL = "select %s::int + %s::int as total, pg_backend_pid() as pid"

JDBC_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jdbc", "TxPool.java")
JDBC_JAR = "/usr/share/java/postgresql.jar"
#: Asked by each client at its end, through the pooler: whether the server it landed on
#: holds SUM_SQL as a prepared statement (whose name is the pooler's).
NAMED_SQL = "select count(*) from pg_prepared_statements where statement = $1"
PSYCOPG_NAMED_SQL = "select count(*) from pg_prepared_statements where statement = %s"

_jdbc_classes: list[str] = []


class ServerWatch:
    """The most server connections of ``role`` PostgreSQL showed at once, polled in a
    thread over a direct connection (the pooler never sees these queries)."""

    def __init__(self, dsn: str, role: str) -> None:
        self.dsn = dsn
        self.role = role
        self.most = 0
        self.samples = 0
        self._done = threading.Event()
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._watch, name="pg_stat_activity watch")

    def _watch(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while True:
                    last = self._done.is_set()
                    row = conn.execute(
                        "select count(*) from pg_stat_activity"
                        " where usename = %s and backend_type = 'client backend'",
                        (self.role,),
                    ).fetchone()
                    assert row is not None
                    self.most = max(self.most, int(row[0]))
                    self.samples += 1
                    self._ready.set()
                    if last:
                        return  # a last look after the run: its servers are still open
                    self._done.wait(0.02)
        except BaseException as e:  # reported by stop()
            self._error = e
            self._ready.set()

    def start(self) -> None:
        """Start polling; return once the first sample is taken."""
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        if self._error is not None:
            raise self._error


class TransactionDriverTests(SynchronousTestCase):
    def setUp(self) -> None:
        skip_unless_postgres()
        self.pg = shared_postgres()
        self.role = unique_name("e2e_drv_u")
        self.db = unique_name("e2e_drv_db")
        self.pg.create_role(self.role)
        self.pg.create_database(self.db, owner=self.role)
        self.pg.psql(
            "create table rows (client int not null, k int not null);\n"
            "create type mood as enum ('sad', 'ok', 'happy');\n",
            dbname=self.db,
            user=self.role,
        )
        self.pooler = PoolerProcess(
            self,
            self.pg,
            {
                "pool_mode": "transaction",
                "default_pool_size": SERVERS,
                "max_client_conn": CLIENTS * 2 + 10,
                "query_wait_timeout": QUERY_WAIT_TIMEOUT,
            },
        ).start()

    # -- helpers --------------------------------------------------------------------------

    @contextmanager
    def servers_watched(self) -> Iterator[ServerWatch]:
        """Run the body while PostgreSQL is polled; then assert the server connections of
        the test's role never exceeded SERVERS (and that some were seen at all)."""
        watch = ServerWatch(self.pg.dsn(), self.role)
        watch.start()
        try:
            yield watch
        finally:
            watch.stop()
        self.assertGreater(watch.most, 0, "pg_stat_activity never showed a server")
        self.assertLessEqual(
            watch.most, SERVERS, f"{watch.most} server connections at once\n{self.log()}"
        )

    def log(self) -> str:
        return f"pooler log tail:\n{self.pooler.log_tail()}"

    def run_async(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run a coroutine in a fresh asyncio loop (the pooler is another process)."""

        async def bounded() -> Any:
            return await asyncio.wait_for(make(), RUN_TIMEOUT)

        try:
            return asyncio.run(bounded())
        except Exception as e:
            raise AssertionError(f"{type(e).__name__}: {e}\n{self.log()}") from e

    def run_clients(self, client: Callable[[int], Awaitable[tuple[set[int], int]]]) -> None:
        """CLIENTS concurrent ``client(i)`` runs while the servers are watched; then what
        ``assert_shared`` asks of their (pids, named) answers."""

        async def main() -> list[tuple[set[int], int]]:
            return list(await asyncio.gather(*(client(i) for i in range(CLIENTS))))

        with self.servers_watched():
            seen = self.run_async(main)
        self.assert_shared(seen)

    def assert_shared(self, seen: list[tuple[set[int], int]]) -> None:
        """Per client, (the backend pids of its SUM_SQL, how many servers it asked held
        SUM_SQL's text as a prepared statement): the pids together are no more than the
        pool's servers, some client's statement ran on more than one of them, and a server
        held the text under a name (so the driver did not run it unnamed)."""
        every: set[int] = set().union(*(pids for pids, _ in seen))
        self.assertLessEqual(len(every), SERVERS, f"backend pids {sorted(every)}")
        moved = sum(1 for pids, _ in seen if len(pids) > 1)
        self.assertGreater(moved, 0, "no client's statement ever ran on a second server")
        named = sum(found for _, found in seen)
        self.assertGreater(named, 0, "no server held SUM_SQL as a named statement")

    def rows_of(self, client: int) -> int:
        """Rows of ``client`` in the test's table, asked PostgreSQL directly."""
        out = self.pg.psql(
            "select count(*) from rows where client = :client",
            dbname=self.db,
            variables={"client": str(client)},
        )
        return int(out.strip())

    # -- asyncpg --------------------------------------------------------------------------

    def asyncpg_connect(self, **kwargs: Any) -> Awaitable[Any]:
        return asyncpg.connect(
            host="127.0.0.1",
            port=self.pooler.port,
            user=self.role,
            database=self.db,
            timeout=RUN_TIMEOUT,
            **kwargs,
        )

    def need_asyncpg(self) -> None:
        if asyncpg is None:
            raise SkipTest("asyncpg is not installed (pip install -e '.[test]')")

    def test_asyncpg_statement_cache(self) -> None:
        """asyncpg prepares every statement it runs (statement_cache_size's default): fetch,
        an explicit prepare(), executemany, transactions committed and rolled back, an
        enum type it introspects, from CLIENTS connections at once."""
        self.need_asyncpg()

        class Rollback(Exception):
            pass

        async def client(i: int) -> tuple[set[int], int]:
            conn = await self.asyncpg_connect()
            pids: set[int] = set()
            try:
                for k in range(ROUNDS):
                    row = await conn.fetchrow(SUM_SQL, i, k)
                    self.assertEqual(row["total"], i + k)
                    pids.add(row["pid"])
                stmt = await conn.prepare("select $1::int * 2 as doubled, $2::text as label")
                for k in range(ROUNDS):
                    row = await stmt.fetchrow(k, f"c{i}")
                    self.assertEqual((row["doubled"], row["label"]), (k * 2, f"c{i}"))
                values = await conn.fetch("select g from generate_series(1, $1::int) g", i + 1)
                self.assertEqual([r["g"] for r in values], list(range(1, i + 2)))
                label = await conn.fetchval("select (enum_range(null::mood))[$1::int % 3 + 1]", i)
                self.assertEqual(label, ["sad", "ok", "happy"][i % 3])
                await conn.executemany(
                    "insert into rows (client, k) values ($1, $2)",
                    [(i, k) for k in range(ROUNDS)],
                )
                async with conn.transaction():
                    await conn.execute("insert into rows (client, k) values ($1, $2)", i, -1)
                    count = await conn.fetchval("select count(*) from rows where client = $1", i)
                    self.assertEqual(count, ROUNDS + 1)
                with self.assertRaises(Rollback):
                    async with conn.transaction():
                        await conn.execute("insert into rows (client, k) values ($1, $2)", i, -2)
                        raise Rollback()
                count = await conn.fetchval("select count(*) from rows where client = $1", i)
                self.assertEqual(count, ROUNDS + 1)
                self.assertFalse(conn.is_in_transaction())
                named = await conn.fetchval(NAMED_SQL, SUM_SQL)
            finally:
                await conn.close()
            return pids, named

        self.run_clients(client)
        for i in range(CLIENTS):
            self.assertEqual(self.rows_of(i), ROUNDS + 1)

    def test_asyncpg_cache_eviction(self) -> None:
        """statement_cache_size = 2 with five statements in turn: asyncpg closes each
        evicted statement (Close, Sync) and prepares it again later, on whatever server."""
        self.need_asyncpg()
        texts = [f"select $1::int + {j} as v, pg_backend_pid() as pid" for j in range(5)]

        async def client(i: int) -> tuple[set[int], int]:
            conn = await self.asyncpg_connect(statement_cache_size=2)
            pids: set[int] = set()
            try:
                for k in range(ROUNDS):
                    for j, text in enumerate(texts):
                        row = await conn.fetchrow(text, i * 100 + k)
                        self.assertEqual(row["v"], i * 100 + k + j)
                        pids.add(row["pid"])
                named = await conn.fetchval(NAMED_SQL, texts[-1])
            finally:
                await conn.close()
            return pids, named

        self.run_clients(client)

    def test_asyncpg_reset_and_close(self) -> None:
        """``conn.reset()`` (asyncpg's reset query: pg_advisory_unlock_all(), CLOSE ALL,
        UNLISTEN *, RESET ALL) ends what pinned the client, and asyncpg's pool runs it at
        each release; a client closed while pinned, or dropped inside a transaction,
        leaves nothing for the next client.  CLIENTS clients pin in turn on SERVERS
        servers: a pin that outlived its reset would keep a server from the others past
        query_wait_timeout."""
        self.need_asyncpg()
        default = self.pg.psql("show work_mem").strip()

        async def pinned_then_reset(i: int) -> None:
            conn = await self.asyncpg_connect()
            try:
                await conn.execute("set work_mem = '7777kB'")
                await conn.fetchval("select pg_advisory_lock($1::bigint)", 1000 + i)
                pid = await conn.fetchval("select pg_backend_pid()")
                for _ in range(3):
                    # Pinned: the same server, with the client's setting.
                    self.assertEqual(await conn.fetchval("select pg_backend_pid()"), pid)
                    self.assertEqual(await conn.fetchval("show work_mem"), "7777kB")
                await conn.reset()
                for k in range(3):
                    self.assertEqual(await conn.fetchval(SUM_SQL, i, k), i + k)
                    self.assertEqual(await conn.fetchval("show work_mem"), default)
            finally:
                await conn.close()

        async def closed_while_pinned(i: int) -> None:
            conn = await self.asyncpg_connect()
            await conn.execute("set work_mem = '6666kB'")
            self.assertEqual(await conn.fetchval(SUM_SQL, i, 1), i + 1)
            await conn.close()

        async def dropped_in_transaction(i: int) -> None:
            conn = await self.asyncpg_connect()
            await conn.transaction().start()
            await conn.execute("insert into rows (client, k) values ($1, $2)", 5000 + i, 0)
            conn.terminate()  # no Terminate, no ROLLBACK: the socket just closes

        async def pooled(i: int, pool: Any) -> None:
            for k in range(ROUNDS):
                async with pool.acquire() as conn:
                    # A connection acquired again had asyncpg's reset query at release.
                    self.assertFalse(conn.is_in_transaction())
                    self.assertEqual(await conn.fetchval("show work_mem"), default)
                    await conn.execute("set work_mem = '5555kB'")
                    self.assertEqual(await conn.fetchval(SUM_SQL, i, k), i + k)

        async def fresh(i: int) -> None:
            conn = await self.asyncpg_connect()
            try:
                self.assertEqual(await conn.fetchval("show work_mem"), default)
                self.assertEqual(await conn.fetchval("select count(*) from rows"), 0)
                locks = await conn.fetchval(
                    "select count(*) from pg_locks where locktype = 'advisory'"
                    " and database = (select oid from pg_database"
                    " where datname = current_database())"
                )
                self.assertEqual(locks, 0)
            finally:
                await conn.close()

        async def main() -> None:
            await asyncio.gather(*(pinned_then_reset(i) for i in range(CLIENTS)))
            await asyncio.gather(*(closed_while_pinned(i) for i in range(CLIENTS)))
            await asyncio.gather(*(dropped_in_transaction(i) for i in range(CLIENTS)))
            pool = await asyncpg.create_pool(
                host="127.0.0.1",
                port=self.pooler.port,
                user=self.role,
                database=self.db,
                min_size=2,
                max_size=CLIENTS // 2,
            )
            try:
                await asyncio.gather(*(pooled(i, pool) for i in range(CLIENTS)))
            finally:
                await pool.close()
            # Whatever server each client lands on now has none of the settings, locks or
            # open transactions of the clients before.
            await asyncio.gather(*(fresh(i) for i in range(CLIENTS)))

        with self.servers_watched():
            self.run_async(main)

    # -- psycopg async --------------------------------------------------------------------

    def psycopg_dsn(self) -> str:
        return self.pg.dsn(self.role, self.db, port=self.pooler.port)

    def psycopg_clients(self, **options: Any) -> None:
        """CLIENTS psycopg AsyncConnections at once: the same statement ROUNDS times in
        transactions (autocommit off) and alone (on), five statements through a prepared
        cache of two (psycopg deallocates what it evicts), executemany, and a pipeline
        (whose statements go out with a Close of an evicted statement among them and are
        read after a Flush, before their Sync)."""
        dsn = self.psycopg_dsn()

        async def client(i: int) -> tuple[set[int], int]:
            conn = await psycopg.AsyncConnection.connect(dsn, **options)
            pids: set[int] = set()
            try:
                async with conn.cursor() as cur:
                    for k in range(ROUNDS):
                        await cur.execute(PSYCOPG_SUM_SQL, (i, k))
                        total, pid = await cur.fetchone()  # type: ignore[misc]
                        self.assertEqual(total, i + k)
                        pids.add(pid)
                        if k % 3 == 2:
                            await conn.commit()
                    await conn.commit()
                    await conn.set_autocommit(True)
                    for k in range(ROUNDS):
                        await cur.execute(PSYCOPG_SUM_SQL, (k, i))
                        total, pid = await cur.fetchone()  # type: ignore[misc]
                        self.assertEqual(total, i + k)
                        pids.add(pid)
                    conn.prepared_max = 2
                    for k in range(ROUNDS):
                        for j in range(5):
                            await cur.execute(f"select %s::int * {j + 1}", (i + k,))
                            self.assertEqual(await cur.fetchone(), ((i + k) * (j + 1),))
                    await cur.executemany(
                        "insert into rows (client, k) values (%s, %s)",
                        [(i, k) for k in range(ROUNDS)],
                    )
                    async with conn.pipeline():
                        curs = [conn.cursor() for _ in range(ROUNDS)]
                        for k, c in enumerate(curs):
                            await c.execute(PSYCOPG_SUM_SQL, (i, k * 10))
                        await cur.execute("insert into rows (client, k) values (%s, %s)", (i, -1))
                        for k, c in enumerate(curs):
                            total, pid = await c.fetchone()  # type: ignore[misc]
                            self.assertEqual(total, i + k * 10)
                            pids.add(pid)
                    await cur.execute("select count(*) from rows where client = %s", (i,))
                    self.assertEqual(await cur.fetchone(), (ROUNDS + 1,))
                    await cur.execute(PSYCOPG_NAMED_SQL, (SUM_SQL,), prepare=False)
                    named = await cur.fetchone()
                    assert named is not None
            finally:
                await conn.close()
            return pids, named[0]

        self.run_clients(client)
        for i in range(CLIENTS):
            self.assertEqual(self.rows_of(i), ROUNDS + 1)

    def test_psycopg_async_prepare_threshold_default(self) -> None:
        """No client setting: psycopg prepares a statement on its fifth use."""
        self.psycopg_clients()

    def test_psycopg_async_prepare_threshold_zero(self) -> None:
        """prepare_threshold = 0: every statement prepared on its first use."""
        self.psycopg_clients(prepare_threshold=0)

    def test_psycopg_async_pipeline_is_one_transaction(self) -> None:
        """A pipeline's statements up to its Sync are one implicit transaction, also when
        the client reads results (after a Flush) before the Sync: half the clients end
        theirs with an error (their insert rolls back), half with a second insert (both
        stay).  A server given back before the Sync would put one client's statements in
        another's transaction: inserts committed that must roll back, and lost."""
        dsn = self.psycopg_dsn()

        async def client(i: int) -> int:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            fails = i % 2 == 1
            try:
                cur, probe = conn.cursor(), conn.cursor()
                try:
                    async with conn.pipeline():
                        await cur.execute("insert into rows (client, k) values (%s, 1)", (i,))
                        await probe.execute("select %s::int", (i,))
                        self.assertEqual(await probe.fetchone(), (i,))
                        if fails:
                            await cur.execute("select 1 / 0")
                        else:
                            await cur.execute("insert into rows (client, k) values (%s, 2)", (i,))
                except psycopg.errors.DivisionByZero:
                    self.assertTrue(fails)
                await cur.execute("select count(*) from rows where client = %s", (i,))
                row = await cur.fetchone()
                assert row is not None
                return int(row[0])
            finally:
                await conn.close()

        async def main() -> list[int]:
            return list(await asyncio.gather(*(client(i) for i in range(CLIENTS))))

        with self.servers_watched():
            counts = self.run_async(main)
        want = [0 if i % 2 else 2 for i in range(CLIENTS)]
        self.assertEqual(counts, want, "rows per client (odd ones failed)")
        self.assertEqual([self.rows_of(i) for i in range(CLIENTS)], want)

    # -- the PostgreSQL JDBC driver -------------------------------------------------------

    def jdbc_classes(self) -> str:
        """TxPool.java compiled once per process into a temp dir; skip without Java."""
        for tool in ("java", "javac"):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed (Debian: default-jdk-headless)")
        if not os.path.exists(JDBC_JAR):
            raise SkipTest(f"{JDBC_JAR} is missing (Debian: libpostgresql-jdbc-java)")
        if not _jdbc_classes:
            out = tempfile.mkdtemp(prefix="pgpool-tw-jdbc-")
            atexit.register(shutil.rmtree, out, True)
            proc = subprocess.run(
                ["javac", "-d", out, "-cp", JDBC_JAR, JDBC_SOURCE],
                capture_output=True,
                text=True,
                timeout=120,
            )
            self.assertEqual(proc.returncode, 0, f"javac failed:\n{proc.stderr}")
            _jdbc_classes.append(out)
        return _jdbc_classes[0]

    def run_jdbc(self, options: str = "") -> None:
        """TxPool with CLIENTS threads through the pooler; its checksum must be the sum of
        the results its clients were owed (see TxPool.java)."""
        classes = self.jdbc_classes()
        url = f"jdbc:postgresql://127.0.0.1:{self.pooler.port}/{self.db}?user={self.role}"
        if options:
            url += "&" + options
        argv = ["java", "-cp", f"{JDBC_JAR}:{classes}", "TxPool", url, str(CLIENTS), str(ROUNDS)]
        with self.servers_watched():
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT * 2)
        report = f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n"
        report += f"{proc.stderr[-4000:]}\n{self.log()}"
        self.assertEqual(proc.returncode, 0, report)
        out = dict(re.findall(r"^(\w+) (\d+)$", proc.stdout, re.MULTILINE))
        for i in range(CLIENTS):
            self.assertEqual(self.rows_of(i), ROUNDS, report)
        # Per client: SUM_SQL ROUNDS times, four products ROUNDS times, its row count.
        want = sum(
            sum(i + k for k in range(ROUNDS)) * (1 + 1 + 2 + 3 + 4) + ROUNDS for i in range(CLIENTS)
        )
        self.assertEqual(out.get("errors"), "0", report)
        self.assertEqual(out.get("checksum"), str(want), report)
        self.assertLessEqual(int(out.get("pids", "0")), SERVERS, report)
        self.assertGreater(int(out.get("moved", "0")), 0, report)
        self.assertGreater(int(out.get("named", "0")), 0, report)

    def test_jdbc_default_settings(self) -> None:
        """No client setting: the driver prepares on the server from a statement's fifth
        use (prepareThreshold's default)."""
        self.run_jdbc()

    def test_jdbc_prepare_threshold_one(self) -> None:
        """prepareThreshold=1: server-prepared from the first use."""
        self.run_jdbc("prepareThreshold=1")

    def test_jdbc_statement_cache_eviction(self) -> None:
        """A statement cache of two queries: the driver closes the statements it evicts
        (Close before its next statement) and prepares them again."""
        self.run_jdbc("prepareThreshold=1&preparedStatementCacheQueries=2")

    # -- the exchanges behind the drivers' faults -----------------------------------------

    def raw_client(self) -> RawClient:
        client = RawClient(self.pooler.port)
        self.addCleanup(client.close)
        client.startup(user=self.role, database=self.db)
        return client

    def test_raw_close_answered_after_the_execute_before_it(self) -> None:
        """Bind, Execute, Close (of a statement the pooler answers for), Sync: the pooler's
        CloseComplete comes after the Execute's CommandComplete, as from a server.
        (libpq 17+ in pipeline mode waits for the CloseComplete after the command's
        results; one that came before them is lost and psycopg hangs.)"""
        client = self.raw_client()
        client.send(_parse("s1", "select 1") + _SYNC)
        self.assertEqual(_kinds(client.until_ready()), "1Z")
        client.send(_bind("s1") + _execute() + _close("s1") + _SYNC)
        self.assertEqual(_kinds(client.until_ready()), "2DC3Z")

    def test_raw_server_kept_until_sync(self) -> None:
        """Parse, Bind, Execute, Flush: the statement runs in an implicit transaction that
        lasts until the client's Sync, so the server must stay the client's until then,
        though every answer owed has come and the last ReadyForQuery said idle."""
        a = self.raw_client()
        b = self.raw_client()
        a.send(_parse("", "insert into rows (client, k) values (777, 1)"))
        a.send(_bind("") + _execute() + _FLUSH)
        self.assertEqual(_kinds(_until(a, _COMMAND_COMPLETE)), "12C")
        for _ in range(3):
            rows = _data_rows(
                b.query(
                    "select txid_current_if_assigned() is null,"
                    " (select count(*) from rows where client = 777)"
                )
            )
            # b is never inside a's transaction: no transaction id, a's row unseen.
            self.assertEqual(rows, [[b"t", b"0"]])
        a.send(_SYNC)
        self.assertEqual(_kinds(a.until_ready()), "Z")
        self.assertEqual(self.rows_of(777), 1)

    def test_raw_server_kept_after_an_error_until_sync(self) -> None:
        """Parse, Bind, Execute that fails, Flush: the server ignores everything up to the
        client's Sync, so it must stay the client's until then; another client's
        statements sent there would be skipped without an answer (a driver waiting on a
        Flush hangs)."""
        a = self.raw_client()
        b = self.raw_client()
        a.send(_parse("", "select 1 / 0") + _bind("") + _execute() + _FLUSH)
        self.assertEqual(_kinds(_until(a, m.ERROR_RESPONSE)), "1E")
        b.send(_parse("", "select 1") + _bind("") + _execute() + _SYNC)
        self.assertEqual(_kinds(b.until_ready()), "12DCZ")
        a.send(_SYNC)
        self.assertEqual(_kinds(a.until_ready()), "Z")
        self.assertEqual(_data_rows(a.query("select 2")), [[b"2"]])


_COMMAND_COMPLETE, _DATA_ROW = ord("C"), ord("D")
_SYNC = m.message(b"S")
_FLUSH = m.message(b"H")


def _parse(name: str, sql: str) -> bytes:
    return m.message(b"P", m.cstring(name) + m.cstring(sql) + b"\0\0")


def _bind(statement: str) -> bytes:
    # Unnamed portal, no parameters, results in text.
    return m.message(b"B", b"\0" + m.cstring(statement) + b"\0\0\0\0\0\0")


def _execute() -> bytes:
    return m.message(b"E", b"\0\0\0\0\0")


def _close(statement: str) -> bytes:
    return m.message(b"C", b"S" + m.cstring(statement))


def _kinds(messages: list[tuple[int, bytes]]) -> str:
    return "".join(chr(kind) for kind, _ in messages)


def _until(client: RawClient, kind: int) -> list[tuple[int, bytes]]:
    """Messages up to and including the first of ``kind`` (no ReadyForQuery will come)."""
    seen: list[tuple[int, bytes]] = []
    while not any(k == kind for k, _ in seen):
        seen += client.read_messages()
    return seen


def _data_rows(messages: list[tuple[int, bytes]]) -> list[list[Optional[bytes]]]:
    """The text columns of each DataRow."""
    rows = []
    for kind, body in messages:
        if kind != _DATA_ROW:
            continue
        count = int.from_bytes(body[:2], "big")
        pos, row = 2, []
        for _ in range(count):
            size = int.from_bytes(body[pos : pos + 4], "big", signed=True)
            pos += 4
            if size < 0:
                row.append(None)
            else:
                row.append(body[pos : pos + size])
                pos += size
        rows.append(row)
    return rows
