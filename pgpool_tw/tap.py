"""``twistd pgpool``: command-line options and the service they build.

A configuration that cannot be used ends twistd with one line (``file:line: setting: what is
allowed``) and exit status 1, never with twistd's usage text: the options were right, the
file was not.  The start-up report (unused pgpool-II settings by feature, nodes not used yet)
is logged here, once; a reload logs only what changed (``PgpoolService.reload``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, NoReturn, Optional

from twisted.application.service import IService
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized

import pgpool_tw
from pgpool_tw.cluster.cluster import settings_report
from pgpool_tw.config.authfiles import AuthFilesError, load_auth_files
from pgpool_tw.config.pcpconf import load_pcp_conf
from pgpool_tw.config.settings import ConfigError, load_config
from pgpool_tw.config.tls import TLSConfigError, load_tls
from pgpool_tw.engine import fastpoll
from pgpool_tw.listeners import ListenError
from pgpool_tw.logs.jsonlog import twistd_observer
from pgpool_tw.service import PgpoolService

log = Logger()

#: Where Debian's pgpool2 package keeps its file, so a pgpool-II user's file is found.
DEFAULT_CONFIG = "/etc/pgpool2/pgpool.conf"


def _refuse(message: str) -> NoReturn:
    """One line on stderr and exit status 1; SystemExit skips twistd's usage text."""
    raise SystemExit(message)


class Options(usage.Options):
    synopsis = "[-c pgpool.conf]"
    longdesc = (
        "Run pgpool-tw, a PostgreSQL connection pooler that reads pgpool-II's pgpool.conf. "
        f"Without -c it reads ./pgpool.conf when present, else {DEFAULT_CONFIG}."
    )
    optFlags = [
        [
            "discard-status",
            "D",
            "discard pgpool_status: every node starts up, whatever was down when it stopped",
        ],
    ]
    optParameters = [
        ["hba-file", "a", None, "path of pool_hba.conf (overrides pool_hba_file)"],
        ["pcp-file", "F", None, "path of pcp.conf (default: pcp.conf beside pgpool.conf)"],
        [
            "config",
            "c",
            None,
            f"path of pgpool.conf (default: ./pgpool.conf, else {DEFAULT_CONFIG})",
        ],
    ]

    def opt_version(self) -> None:
        """Display pgpool-tw's and Twisted's versions and exit."""
        from twisted import copyright

        print(f"pgpool-tw {pgpool_tw.__version__}")
        print(f"Twisted {copyright.version}")
        sys.exit(0)

    def postOptions(self) -> None:
        path = self["config"]
        if path is None:
            path = "pgpool.conf" if os.path.exists("pgpool.conf") else DEFAULT_CONFIG
        try:
            settings = load_config(os.path.abspath(path))
        except ConfigError as e:
            _refuse(str(e))
        if not settings.backends:
            _refuse(f"{path}: no backend configured; set backend_hostname0")
        self["settings"] = settings
        self["overrides"] = {}
        if self["hba-file"] is not None:
            self["overrides"]["pool_hba_file"] = os.path.abspath(self["hba-file"])
        self["pcp_file"] = ""
        if self["pcp-file"] is not None:
            # Named on the command line: a file that cannot be read is a mistake, not a
            # choice to run without PCP.
            self["pcp_file"] = os.path.abspath(self["pcp-file"])
            if load_pcp_conf(self["pcp_file"]) is None:
                _refuse(f"{self['pcp_file']}: cannot read pcp.conf (-F)")
        try:
            load_auth_files(dataclasses.replace(settings, **self["overrides"]))
            load_tls(settings)
        except (AuthFilesError, TLSConfigError) as e:
            _refuse(str(e))


class _TwistdService(PgpoolService):
    """Under twistd a listener that cannot open ends the process with one line."""

    #: log_destination = 'jsonlog': the observer twistd is to log to (see setServiceParent).
    log_observer: Optional[ILogObserver] = None

    def setServiceParent(self, parent: Any) -> None:
        """twistd makes the application, adds this service to it, and only then starts
        logging, to the application's ILogObserver component when it has one: the JSON
        observer is set there (twistd's own --logger option still wins)."""
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        fastpoll.install(self.reactor)  # the process is ours: a leaner loop (bench/RESULTS.md)
        super().startService()

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            raise SystemExit(f"pgpool-tw: {e}") from None


def makeService(options: Any) -> IService:
    settings = options["settings"]
    for warning in settings_report(settings):
        log.warn("{line}", line=warning)
    service = _TwistdService(
        settings,
        handle_signals=True,
        overrides=options["overrides"],
        discard_status=bool(options["discard-status"]),
        pcp_file=options.get("pcp_file", ""),
    )
    if settings.log_destination == "jsonlog":
        service.log_observer = twistd_observer(getattr(options, "parent", None))
        if service.log_observer is None:
            log.warn(
                "log_destination = jsonlog: twistd logs as text here (--syslog, or a "
                "daemon told to log to stdout)"
            )
    return service
