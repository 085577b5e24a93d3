"""The config room: pgpool.conf, pool_hba.conf and pool_passwd read into frozen values.

``syntax`` (the line format), ``values`` (how values read), ``backends`` (backend_*N nodes),
``settings`` (the Config and its table), ``pgpool2_names`` (pgpool-II names not used yet, by
feature), ``report`` (what to tell the user at start and on reload), ``hba``, ``passwd``,
``authfiles`` and ``tls``.  Parsing is pure: no sockets, no logging; callers log.
"""
