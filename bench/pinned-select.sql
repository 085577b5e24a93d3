-- S7 (bench/workloads.py): pgbench -S's transaction, each client pinned to its server.
-- pgbench runs this with -D nbranches=0, so a client's first transaction only sets the
-- session's statement_timeout outside a transaction block (a session setting a
-- transaction pooler pins for) and reads the scale as -S does; later ones are -S's own.
\if :nbranches = 0
SET statement_timeout = '1min';
SELECT count(*) AS nbranches FROM pgbench_branches \gset
\endif
\set aid random(1, 100000 * :nbranches)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
