"""Settings and auth files read into frozen values: pgpool.conf, pool_hba.conf, pool_passwd, TLS.

``syntax`` (the line format), ``values`` (how values read), ``backends`` (backend_*N nodes),
``settings`` (the Config and its table), ``pgpool2_names`` (pgpool-II names not used yet, by
feature), ``report`` (what to tell the user at start and on reload), ``hba``, ``passwd``,
``authfiles``, ``tls``, ``health`` (the health check's settings per node) and ``escapes``
(the % escapes of the failover commands, checked at load). Files are read and checked here,
at start and on reload, so a bad file fails there with one line naming it and never in the
middle of a client's login; a reload builds new values and swaps them in whole. This room
must never read sockets, log, hold per-session state or change a value in place. Only
``tls.py`` imports Twisted (for its TLS context types).
"""
