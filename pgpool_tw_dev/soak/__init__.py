"""``scripts/soak``: a fault-injection soak of pgpool-tw (issue #20, item 7).

For N minutes, pgbench and psycopg clients with churn (commits, short sessions, COPY) run
through a real ``twistd pgpool`` in front of a throwaway PostgreSQL, while a seeded
schedule kills -9, fast-restarts and SIGSTOPs the server, kills clients mid-transaction
and mid-COPY, and floods the pooler with connections that never log in.  At the end it
compares the commits the clients saw acknowledged with the rows in the table, the
pooler's fds and RSS with the start, and the seconds to clean service after each fault.

Rooms: ``stage.py`` (the servers, the pooler, the measurements of its process),
``ledger.py`` (what the clients saw acknowledged, and the check against the rows),
``clients.py`` (the load: writers, churn, COPY, pgbench rounds), ``faults.py`` (each
fault, the probe, the flood, the schedule), ``victim.py`` (the client process a fault
kills), ``run.py`` (the phases, the report, the exit status).

Must never: be imported by ``pgpool_tw``; signal a process it did not start (each by its
pid or Popen); talk to anything but loopback.
"""

from __future__ import annotations
