"""The operator's view: what the pooler is doing now, read from one stats snapshot.

``snapshot.py`` builds that snapshot from the sessions, the pool and the warm
lane when asked (``PgpoolService.snapshot()``); SHOW commands, an admin console
and metrics belong here and read only it.  This room sits above every other
(nothing imports it but ``service.py``) and must never touch a hot path: taking
a snapshot walks connections once, and taking none costs nothing.
"""
