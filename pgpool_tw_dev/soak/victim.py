"""A client process that the soak kills with SIGKILL mid-transaction or mid-COPY: the
kernel then closes its socket with no Terminate, as when a client machine's program dies.

``python -m pgpool_tw_dev.soak.victim MODE DSN FIRST_ID COUNT``.  MODE is ``tx-idle``
(INSERTs in an open transaction, then nothing), ``tx-busy`` (the same, then a long
``pg_sleep`` running) or ``copy`` (COPY FROM STDIN that never ends).  It prints
``ready`` once the server holds the uncommitted rows or is in COPY with data sent, and
never commits: none of its ids may ever be found.

Must never: commit.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Optional

MODES = ("tx-idle", "tx-busy", "copy")
_PAD = "v" * 1000  # 50 rows overflow psycopg's copy buffer: the data reaches the server


def main(argv: Optional[Sequence[str]] = None) -> int:
    import psycopg

    mode, dsn, first, count = argv if argv is not None else sys.argv[1:]
    ids = range(int(first), int(first) + int(count))
    if mode == "copy":
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:  # noqa: SIM117
            with cur.copy("COPY soak_history (id, kind) FROM STDIN") as copy:
                for row_id in ids:
                    copy.write_row((row_id, _PAD))
                print("ready", flush=True)
                while True:
                    copy.write(b"")  # still in COPY; the kill comes while here
                    time.sleep(0.02)
    conn = psycopg.connect(dsn, autocommit=False)  # no ``with``: its exit would commit
    for row_id in ids:
        conn.execute("INSERT INTO soak_history (id, kind) VALUES (%s, 'victim')", (row_id,))
    print("ready", flush=True)
    if mode == "tx-busy":
        conn.execute("SELECT pg_sleep(60)")
    else:
        time.sleep(60)
    conn.rollback()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
