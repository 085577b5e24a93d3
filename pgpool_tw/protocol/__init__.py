"""PostgreSQL's frontend/backend wire protocol, with no I/O and no Twisted.

Owns framing, the startup/SSL/GSS/cancel packets, message builders and
parsers, both directions of password authentication, SQL quoting and the
session tracker that walks an attached session's message headers.  Everything
here takes bytes and returns bytes or decisions, so it can be tested with bytes
alone.  It must never import Twisted, open sockets, log, or import a room above
it (``relay.py`` choosing the C tracker from ``engine.speedups`` is the one
exception today; see docs/ARCHITECTURE.md).
"""
