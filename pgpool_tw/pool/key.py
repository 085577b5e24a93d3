"""The pool key: what a pooled server connection must share with the client it serves.

A server connection is logged in to one node with one set of startup parameters
(user, database, options and GUCs; ``application_name`` is set per session
instead, see ``StartupMessage.pool_key``).  Pools, the warm lane's stacks and the
stats snapshot are all keyed by this one value, so a connection to one node is
never handed to a client bound for another.
"""

from __future__ import annotations

from typing import NamedTuple

from pgpool_tw.protocol.startup import StartupMessage


class PoolKey(NamedTuple):
    node: int  # the backend node's index N (backend_hostnameN)
    params: tuple[tuple[str, str], ...]  # the startup parameters, sorted

    @property
    def user(self) -> str:
        return dict(self.params).get("user", "")

    @property
    def database(self) -> str:
        return dict(self.params).get("database", "")


def pool_key(node: int, startup: StartupMessage) -> PoolKey:
    return PoolKey(node, startup.pool_key())
