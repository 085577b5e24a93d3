"""The optional C fast path and its Python adapter.

C (``_speedups.c`` the loop, ``_relay.c``, ``_slots.c``, ``_writer.c``,
``_tracker.c``/``_tracker_type.c``, ``_lane.c``, ``_login.c``, ``_warm.c``,
``_reset.c``) moves bytes, walks 5-byte headers, looks up the tables Python
hands it, counts and reports events; ``speedups.py`` is the one switch that
loads it, ``fastpoll.py`` puts it in the reactor's epoll iteration,
``writer.py`` gives ``net.transport.make_writer`` the C writer, ``warm.py``
decides what the C lane may do and ``warm_handdown.py`` builds what it is handed.  This
room must never decide on its own: a case off the common path goes back to
Python, and C must not hold a rule that Python also holds (some still do: see
"Not yet" in docs/ARCHITECTURE.md).  Only ``twistd pgpool`` installs it; an
embedding application's reactor keeps Twisted's own path.
"""
