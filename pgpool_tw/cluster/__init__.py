"""The cluster room: the PostgreSQL servers behind the pooler, as nodes.

It owns each node's address, weight, flag, role and status, and which node takes writes
(the primary).  Later it owns primary detection, replication delay, health checks, failover
commands and the router that picks a node per statement.  It never talks to clients and never
holds a server connection: the pool does, asking the cluster where to connect.

``classify``: where a statement may run (standby, primary, every node, the pooler), by pglast.
"""
