"""The cluster room: the PostgreSQL servers behind the pooler, as nodes, and where a
session's statements may go.

``cluster``: each node's address, weight, flag, role and status, the primary, and what
failover does to them (detach, attach, set_primary).  ``topology``: pgpool-II's rules that
turn one round of the replication check's answers into roles, delays and ``lagging``.
``classify``: where a statement may run (standby, primary, every node, the pooler), by
pglast.  ``router``: whether sessions route, and each session's load-balancing node.
``show``: SHOW pool_nodes' rows.  ``session_state``: what a statement leaves in its server
session (transaction pooling's pins).  Pure: it never talks to clients, never holds a
server connection and never imports Twisted.
"""
