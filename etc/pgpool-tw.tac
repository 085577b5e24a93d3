"""pgpool-tw embedded in a Twisted application of your own: ``twistd -ny pgpool-tw.tac``.

An example to copy.  It runs the pooler (``PgpoolService``) beside another
service (here a ``TimerService`` that logs pool statistics; a web status page
or your own protocol server would sit in the same place), and registers an
``IPoolEvents`` observer that logs each client session.

Settings come from the pgpool.conf named by ``$PGPOOL_CONF`` (default
``/etc/pgpool2/pgpool.conf``); the statistics interval from
``$PGPOOL_STATS_INTERVAL`` in seconds (default 60).  For example::

    PGPOOL_CONF=$PWD/pgpool.conf twistd -ny etc/pgpool-tw.tac

The pooler handles the signals here (``handle_signals=True``), as under
``twistd pgpool``: SIGHUP reloads pgpool.conf, SIGTERM is a smart shutdown,
SIGINT a fast one, SIGQUIT an immediate one and SIGUSR1 closes idle server
connections.  An application with signal handlers of its own passes
``handle_signals=False`` and calls ``reload()``, ``shutdown(mode)`` and
``close_idle()`` itself.
"""

from __future__ import annotations

import os

from twisted.application.internet import TimerService
from twisted.application.service import Application
from twisted.logger import Logger
from zope.interface import implementer

from pgpool_tw.stats.events import IPoolEvents, ServerInfo, SessionInfo
from pgpool_tw.service import PgpoolService

CONF = os.environ.get("PGPOOL_CONF", "/etc/pgpool2/pgpool.conf")
STATS_INTERVAL = float(os.environ.get("PGPOOL_STATS_INTERVAL", "60"))

log = Logger(namespace="pgpool-tw.tac")


@implementer(IPoolEvents)
class SessionLog:
    """Logs sessions and backend changes; called once per session, never per message."""

    def client_session_started(self, session: SessionInfo) -> None:
        log.info(
            "session started: client={client} user={user} database={database} "
            "application_name={app!r} server_pid={pid}",
            client=session.client,
            user=session.user,
            database=session.database,
            app=session.application_name,
            pid=session.server_pid,
        )

    def client_session_ended(self, session: SessionInfo) -> None:
        log.info(
            "session ended: client={client} user={user} database={database} server_pid={pid}",
            client=session.client,
            user=session.user,
            database=session.database,
            pid=session.server_pid,
        )

    def server_connection_opened(self, server: ServerInfo) -> None:
        log.info("server={address} pid={pid} opened", address=server.address, pid=server.pid)

    def server_connection_closed(self, server: ServerInfo) -> None:
        log.info("server={address} pid={pid} closed", address=server.address, pid=server.pid)

    def backend_status_changed(self, address: str, status: str) -> None:
        log.warn("backend={address} is now {status}", address=address, status=status)


def log_stats(pooler: PgpoolService) -> None:
    """What the pool holds right now, from counters the pooler keeps anyway."""
    pool = pooler.pool
    log.info(
        "pool stats: clients={clients} waiting={waiting} idle_servers={idle} "
        "servers={servers} reused={reused} discarded={discarded}",
        clients=len(pooler.factory.clients),
        waiting=pool.waiting,
        idle=pool.idle_count,
        servers=len(pooler.factory.servers.live),
        reused=pool.reused,
        discarded=pool.discarded,
    )


application = Application("pgpool-tw")

# from_file raises ConfigError (naming file, line and setting) for a bad pgpool.conf.
pooler = PgpoolService.from_file(CONF, handle_signals=True)
for warning in pooler.config.warnings:
    log.warn("{warning}", warning=warning)
pooler.add_observer(SessionLog())
pooler.setServiceParent(application)

# Services stop in reverse order: the stats timer first, then the pooler drains.
TimerService(STATS_INTERVAL, log_stats, pooler).setServiceParent(application)
