"""The optional C fast path and its Python adapter.

C (``_speedups.c``, ``_tracker.c``, ``_lane.c``, ``_warm.c``) moves bytes, walks
5-byte headers, looks up the tables Python hands it, counts and reports events;
``speedups.py`` is the one switch that loads it, ``fastpoll.py`` puts it in the
reactor's epoll iteration and ``warm.py`` lends it warm logins.  Python decides
everything: this room must never make a decision Python does not make or
cannot take back, and every case off the common path goes back to Python.
Only ``twistd pgpool`` installs it; an embedding application's reactor keeps
Twisted's own path.
"""
