"""Where clients connect: listen_addresses, port and the unix socket directories.

Binding happens in ``PgpoolService.privilegedStartService`` so that a port in
use fails the start with one line (``ListenError``) instead of later.  All or
nothing: a listener that cannot open closes the ones already opened.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory

from pgpool_tw.config.settings import Config
from pgpool_tw.net.transport import tune_listener


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


def listen(reactor: Any, config: Config, factory: Factory) -> tuple[list[IListeningPort], bool]:
    """Bind every TCP address and unix socket of ``config``: all of them, or none.

    Returns the ports and whether every TCP listener got the client socket
    options (then the accepted clients inherit them and need no call each).
    Raises ListenError naming the address that could not be bound.
    """
    ports: list[IListeningPort] = []
    port = config.port
    tuned: list[bool] = []
    try:
        for interface in expand_addresses(config.listen_addresses):
            listening: Any
            if config.so_reuseport:
                listening = listen_reuseport(reactor, port, factory, interface)
            else:
                listening = reactor.listenTCP(port, factory, backlog=1024, interface=interface)
            ports.append(listening)
            tuned.append(tune_listener(listening))
            port = listening.getHost().port
        for directory in config.socket_dirs:
            path = os.path.join(directory, f".s.PGSQL.{port}")
            ports.append(reactor.listenUNIX(path, factory, backlog=1024, mode=0o777, wantPID=True))
    except CannotListenError as e:
        for listening in ports:
            listening.stopListening()
        where = f"{e.interface or '*'}:{e.port}"
        raise ListenError(f"cannot listen on {where}: {e.socketError}") from e
    return ports, all(tuned)


def listen_reuseport(reactor: Any, port: int, factory: Factory, interface: str) -> IListeningPort:
    """A TCP listener with SO_REUSEPORT (PgBouncer's so_reuseport): another pooler may bind
    the same address and port, and the kernel shares new connections between them, so one
    can drain while the other takes over.  Twisted's listenTCP cannot set the option before
    bind; the socket is made here and handed over with ``adoptStreamPort`` (public API).
    Raises CannotListenError as listenTCP would."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    skt = socket.socket(family, socket.SOCK_STREAM)
    try:
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        skt.bind((interface, port))
        skt.listen(1024)
        skt.setblocking(False)
        listening: IListeningPort = reactor.adoptStreamPort(skt.fileno(), family, factory)
    except OSError as e:
        raise CannotListenError(interface, port, e) from e
    finally:
        skt.close()  # adoptStreamPort keeps its own copy of the descriptor
    return listening


def listen_tcp(
    reactor: Any, addresses: tuple[str, ...], port: int, factory: Any
) -> list[IListeningPort]:
    """Bind ``factory`` on ``port`` at each of ``addresses`` (``*``, ``localhost`` as for
    listen_addresses; port 0: one free port for all), all or none."""
    ports: list[IListeningPort] = []
    try:
        for interface in expand_addresses(addresses):
            listening = reactor.listenTCP(port, factory, interface=interface)
            ports.append(listening)
            port = listening.getHost().port
    except CannotListenError as e:
        for listening in ports:
            listening.stopListening()
        raise ListenError(f"cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}") from e
    return ports


def listen_control(
    reactor: Any,
    addresses: tuple[str, ...],
    port: int,
    socket_dirs: tuple[str, ...],
    factory: Any,
) -> list[IListeningPort]:
    """The PCP port: ``listen_tcp``, then ``.s.PGSQL.<port>`` in each of ``socket_dirs``
    (with the bound port when ``port`` is 0), all or none; the socket is open to every
    local user, as pgpool-II's (pcp.conf's password guards it)."""
    ports = listen_tcp(reactor, addresses, port, factory)
    if ports:
        bound: Any = ports[0].getHost()
        port = bound.port
    try:
        for directory in socket_dirs:
            path = os.path.join(directory, f".s.PGSQL.{port}")
            ports.append(reactor.listenUNIX(path, factory, mode=0o777, wantPID=True))
    except CannotListenError as e:
        for listening in ports:
            listening.stopListening()
        raise ListenError(f"cannot listen on {e.interface or e.port}: {e.socketError}") from e
    return ports


def accept_backlog(port: IListeningPort) -> None:
    """Accept the connections waiting in ``port``'s backlog now (``doRead``, what the
    reactor calls when the socket is readable; one call takes up to Twisted's
    ``numberAccepts`` of them): closing the socket would reset them, where a drain wants
    them served.  A connection that arrives between this and the close is still reset
    (Linux's ``net.ipv4.tcp_migrate_req = 1`` hands it to another SO_REUSEPORT socket)."""
    do_read = getattr(port, "doRead", None)
    if do_read is not None and port.fileno() >= 0:  # type: ignore[attr-defined]
        do_read()


def describe(port: IListeningPort) -> str:
    """``host:port`` or the socket path, for the start-up log line."""
    address: Any = port.getHost()
    if hasattr(address, "port"):
        return f"{address.host}:{address.port}"
    name = getattr(address, "name", address)
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
