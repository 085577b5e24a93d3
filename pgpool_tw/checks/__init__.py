"""The checks room: asking the PostgreSQL servers about themselves, and acting on it.

It owns the streaming replication check (``sr_check.py``: pg_is_in_recovery, LSNs,
pg_stat_replication, the primary's non-volatile functions), reading query rows on the
pooler's own connections (``rows.py``), the health check (``health.py``, one login per try:
``login.py``), failover, failback and follow-primary (``failover.py``, running the user's
commands: ``command.py``) and pgpool_status (``status_file.py``). The rules that turn
answers into roles and delays are the cluster room's (``cluster/topology.py``); this room
does the I/O and hands them one round at a time. It never talks to clients and never imports
session/ or service.py.
"""
