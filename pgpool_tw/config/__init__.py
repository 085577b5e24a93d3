"""Settings and auth files read into frozen values: pgpool.conf, pool_hba.conf, pool_passwd, TLS.

Files are read and checked here, at start and on reload, so a bad file fails
there with one line naming it and never in the middle of a client's login; a
reload builds new values and swaps them in whole.  This room must never read
sockets, hold per-session state or change a value in place.  Only ``tls.py``
imports Twisted (for its TLS context types).
"""
