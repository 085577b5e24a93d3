"""The public service: listeners, the pool's clock tick, start and stop.

``PgpoolService`` is what ``twistd pgpool`` runs and what users add to their own
Twisted ``Application``.  It binds its TCP and unix-socket listeners in
``privilegedStartService`` so a port in use fails at start, not later.  Nothing
but ``tap.py`` and users import this module.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pgpool_tw.config import Config, load_config
from pgpool_tw.frontend import FrontendFactory
from pgpool_tw.pool import Pool

log = Logger()


#: How long a stop waits for connections to close before aborting them.
CLOSE_WAIT = 5.0


class ListenError(Exception):
    """A listener could not be opened; the message names the address."""


def expand_addresses(addresses: tuple[str, ...]) -> list[str]:
    """listen_addresses as interfaces: ``*`` is every address, ``localhost`` both loopbacks."""
    out: list[str] = []
    for address in addresses:
        if address == "*":
            candidates = ["::"] if _ipv6_works("::") else ["0.0.0.0"]
        elif address == "localhost":
            candidates = ["127.0.0.1"] + (["::1"] if _ipv6_works("::1") else [])
        else:
            candidates = [address]
        out += [c for c in candidates if c not in out]
    return out


def _ipv6_works(address: str) -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


class PgpoolService(MultiService):
    """A pgpool-tw instance: listeners, a pool and its client sessions.

    Build it from a parsed ``Config`` (or with ``from_file``) and add it to an
    application like any Twisted service.
    """

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.pool = Pool(config, reactor)
        self.factory = FrontendFactory(config, self.pool, reactor)
        self.ports: list[IListeningPort] = []
        self._ticker: Optional[LoopingCall] = None

    @classmethod
    def from_file(cls, path: str, reactor: Any = None) -> PgpoolService:
        return cls(load_config(path), reactor)

    # -- addresses ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port clients reach (the bound one when ``port = 0``)."""
        for listening in self.ports:
            address = listening.getHost()
            if hasattr(address, "port"):
                return int(address.port)
        return self.config.port

    @property
    def socket_paths(self) -> list[str]:
        return [os.path.join(d, f".s.PGSQL.{self.port}") for d in self.config.socket_dirs]

    # -- start and stop ----------------------------------------------------------

    def privilegedStartService(self) -> None:
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.ports:
            self._listen()
        super().startService()
        self._ticker = LoopingCall(self.tick)
        self._ticker.clock = self.reactor
        self._ticker.start(self._tick_interval(), now=False)
        log.info(
            "pgpool-tw listening on {where}",
            where=", ".join(_where(p) for p in self.ports) or "nothing",
        )

    def stopService(self) -> defer.Deferred[Any]:
        """Stop listening, close every client and server connection, and wait for them."""
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        stopping: list[defer.Deferred[Any]] = [
            defer.maybeDeferred(p.stopListening) for p in self.ports
        ]
        self.ports = []
        for client in list(self.factory.clients):
            client.transport.loseConnection()
        self.pool.close_all()
        for server in list(self.factory.servers):
            server.terminate()
        stopping.append(defer.maybeDeferred(super().stopService))
        stopping.append(self._closed(CLOSE_WAIT))
        return defer.DeferredList(stopping)

    def _closed(self, within: float) -> defer.Deferred[None]:
        """Fires once every connection is gone; what is left after ``within`` is aborted."""
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.reactor.seconds() + within
        factory = self.factory

        def check() -> None:
            left = list(factory.clients) + list(factory.servers)
            if not left:
                done.callback(None)
                return
            if self.reactor.seconds() >= deadline:
                for connection in left:
                    connection.transport.abortConnection()
            self.reactor.callLater(0.02, check)

        check()
        return done

    def _listen(self) -> None:
        config = self.config
        port = config.port
        try:
            for interface in expand_addresses(config.listen_addresses):
                listening = self.reactor.listenTCP(
                    port, self.factory, backlog=1024, interface=interface
                )
                self.ports.append(listening)
                port = listening.getHost().port
            for directory in config.socket_dirs:
                path = os.path.join(directory, f".s.PGSQL.{port}")
                self.ports.append(
                    self.reactor.listenUNIX(
                        path, self.factory, backlog=1024, mode=0o777, wantPID=True
                    )
                )
        except CannotListenError as e:
            for listening in self.ports:
                listening.stopListening()
            self.ports = []
            where = f"{e.interface or '*'}:{e.port}"
            raise ListenError(f"cannot listen on {where}: {e.socketError}") from e

    def _tick_interval(self) -> float:
        limit = self.config.client_idle_limit
        return min(1.0, limit / 2) if limit > 0 else 1.0

    def tick(self) -> None:
        """Once a second (or faster for a short client_idle_limit): expire what is due."""
        self.pool.tick()
        limit = self.config.client_idle_limit
        if limit > 0:
            now = self.reactor.seconds()
            for client in list(self.factory.clients):
                client.idle_tick(now, limit)


def _where(port: IListeningPort) -> str:
    address: Any = port.getHost()
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"
    name = getattr(address, "name", address)
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
