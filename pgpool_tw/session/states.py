"""A client session's states, as ``Session._move`` (machine.py) moves between them.

Apart from the machine so that the objects it is composed of (``login.py``) and
the stats snapshot can name them without importing the machine.
"""

STARTUP = 0
WAITING = 1  # startup read; waiting for a client slot or a server
CONNECTING = 2  # a new server connection logs in (login.ServerLogin)
SETTING = 3  # a pooled server connection runs SET application_name
RELAY = 4
CLOSED = 5
AUTHENTICATING = 6  # the pooler checks the client's password against pool_passwd

#: The states' names in logs and the stats snapshot (PgBouncer's "active" for RELAY).
STATE_NAMES = {
    STARTUP: "startup",
    WAITING: "waiting",
    CONNECTING: "connecting",
    SETTING: "setting",
    RELAY: "active",
    CLOSED: "closed",
    AUTHENTICATING: "authenticating",
}
