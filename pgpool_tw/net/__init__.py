"""Sockets and timers below Twisted's transport API, for both legs of a relay.

Owns socket options, the send-now writer and flow-control producers
(``transport.py``), closing an accepted socket without a loop turn
(``accepted.py``) and many timeouts of one length on one timer
(``deadlines.py``).  It must never know the PostgreSQL protocol, hold session
state, or change what a peer sees on the wire.
"""
