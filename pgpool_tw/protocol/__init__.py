"""PostgreSQL's frontend/backend wire protocol, with no I/O and no Twisted.

Everything in this package takes bytes and returns bytes or decisions, so it can
be tested with bytes alone.  It must never import Twisted, open sockets or log.
"""
