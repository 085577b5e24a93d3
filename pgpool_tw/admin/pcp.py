"""The PCP port: pgpool-II's control protocol, for its ``pcp_*`` programs unchanged.

Listens on ``pcp_listen_addresses``:``pcp_port`` and the unix socket
``pcp_socket_dir``/.s.PGSQL.<pcp_port> (where the tools look when ``-h`` is not given),
only while pcp.conf exists (``config/pcpconf.py``; pgpool-II refuses to start without it,
pgpool-tw warns once and leaves the port closed).  Each connection logs in with the md5
salt exchange (``protocol/pcp.py``), then sends commands one at a time; answers are read
from the stats snapshot (``admin/snapshot.py``), the health check's counters and the
configuration, and node commands call the service's ``detach_node``, ``attach_node``,
``promote_node``, ``reload`` and ``shutdown``.  Never on a hot path: nothing here runs
unless a PCP client asks.

Commands: pcp_node_count, pcp_node_info, pcp_health_check_stats, pcp_proc_count,
pcp_proc_info, pcp_pool_status, pcp_detach_node, pcp_attach_node, pcp_promote_node
(``-s`` switchover too), pcp_reload_config, pcp_stop_pgpool (smart, fast, immediate).
Refused with an error that says so: pcp_recovery_node (no online recovery),
pcp_watchdog_info (no watchdog), the ``-g`` (gracefully) forms of detach and promote,
and pgpool-II's set-parameter request.  An unknown packet type is pgpool-II's FATAL.

"A process is a client session here": pgpool-II's process ids are the client sessions'
ids (SHOW CLIENTS' id, KILL_CLIENT's argument); pcp_proc_count lists them and
pcp_proc_info shows one row per session (its database, user, connection time, the node
it is served by and its state).  Sessions the C lane serves alone (warm logins under
``twistd``) have id 0, as in SHOW CLIENTS.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from pgpool_tw.admin import pcp_rows as rows
from pgpool_tw.admin.snapshot import ClientRow, ServerRow, Snapshot
from pgpool_tw.config.pcpconf import PcpUsers
from pgpool_tw.config.settings import Config
from pgpool_tw.logs.escape import printable
from pgpool_tw.logs.ratelimit import RateLimit
from pgpool_tw.protocol import pcp
from pgpool_tw.protocol.errors import ProtocolViolation

log = Logger()

__all__ = ["PcpFactory", "PcpProtocol", "PcpService"]

_MODES = {"s": "smart", "f": "fast", "i": "immediate"}

Answer = Union[bytes, "defer.Deferred[bytes]"]


class PcpService:
    """What the PCP port reads and may ask of the service (``service.py`` builds it)."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        config: Callable[[], Config],
        health_stats: Callable[[], Mapping[int, Any]],
        connections: Callable[[], tuple[list[ClientRow], list[ServerRow]]],
        detach: Callable[[int], defer.Deferred[bool]],
        attach: Callable[[int], defer.Deferred[bool]],
        promote: Callable[[int, bool], defer.Deferred[bool]],
        reload: Callable[[], bool],
        shutdown: Callable[[str], Any],
        users: Callable[[], Optional[PcpUsers]],
        reactor: Any,
    ) -> None:
        self.snapshot = snapshot
        self.config = config
        self.health_stats = health_stats
        self.connections = connections
        self.detach = detach
        self.attach = attach
        self.promote = promote
        self.reload = reload
        self.shutdown = shutdown
        #: Failed PCP logins: one log line a second, with a count of the rest.
        self.failed_logins = RateLimit()
        self.users = users
        self.reactor = reactor


class PcpFactory(Factory):
    """PCP connections; ``closed`` ends them when the service is done."""

    noisy = False

    def __init__(self, service: PcpService) -> None:
        self.service = service
        self.connections: set[PcpProtocol] = set()
        self._all_gone: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> PcpProtocol:
        protocol = PcpProtocol(self.service, self)
        protocol.peer = _peer(addr)
        return protocol

    def closed(self, reactor: Any, within: float) -> defer.Deferred[None]:
        """Fires once every PCP connection has ended.  A client is given ``within``
        seconds to read its last answer and say goodbye (pcp_stop_pgpool's program writes
        its X after reading the answer, and dies of SIGPIPE if the socket is gone), then
        cut."""
        done: defer.Deferred[None] = defer.Deferred()
        if not self.connections:
            done.callback(None)
            return done
        self._all_gone.append(done)
        cut = reactor.callLater(within, self._cut)
        done.addBoth(lambda result: cut.cancel() if cut.active() else None)
        return done

    def _cut(self) -> None:
        for protocol in list(self.connections):
            transport: Any = protocol.transport
            if transport is not None:
                transport.abortConnection()

    def gone(self, protocol: PcpProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections:
            waiting, self._all_gone = self._all_gone, []
            for done in waiting:
                done.callback(None)


class _Fatal(Exception):
    """An error after which pgpool-II's PCP worker closes the connection."""


class PcpProtocol(Protocol):
    """One PCP client: the login, then its commands in order, one answer each."""

    def __init__(self, service: PcpService, factory: PcpFactory) -> None:
        self.service = service
        self.owner = factory
        self.peer = ""
        self.user: Optional[str] = None
        self._reader = pcp.PcpReader()
        self._salt: Optional[bytes] = None
        self._queue: list[tuple[bytes, bytes]] = []
        self._busy = False
        self._done = False

    # -- Twisted -------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.owner.connections.add(self)
        if self.service.config().log_pcp_processes:
            log.info("PCP: connection from {peer}", peer=self.peer)

    def connectionLost(self, reason: Any = None) -> None:
        self.owner.gone(self)
        self._done = True
        if self.service.config().log_pcp_processes:
            log.info("PCP: connection from {peer} closed", peer=self.peer)

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._queue += self._reader.feed(data)
        except ProtocolViolation as e:
            self._fatal("invalid PCP packet", e.message)
            return
        self._next()

    # -- the loop ------------------------------------------------------------------

    def _next(self) -> None:
        """Answer queued requests in order; a command that waits (a node change) holds
        the ones behind it until its answer is sent."""
        while self._queue and not self._busy and not self._done:
            kind, body = self._queue.pop(0)
            try:
                answer = self._answer(kind, body)
            except _Fatal as e:
                message, detail = e.args
                self._fatal(message, detail)
                return
            if isinstance(answer, bytes):
                self._send(answer)
                continue
            self._busy = True
            answer.addErrback(self._failed)
            answer.addCallback(self._waited)

    def _waited(self, answer: bytes) -> None:
        self._busy = False
        self._send(answer)
        self._next()

    def _failed(self, failure: Any) -> bytes:
        log.failure("PCP: a command failed", failure)
        return pcp.error_packet("PCP command failed", str(failure.value))

    def _send(self, data: bytes) -> None:
        if not self._done and self.transport is not None:
            self.transport.write(data)

    def _fatal(self, message: str, detail: str) -> None:
        self._send(pcp.error_packet(message, detail, "FATAL"))
        self._done = True
        if self.transport is not None:
            self.transport.loseConnection()

    # -- requests ------------------------------------------------------------------

    def _answer(self, kind: bytes, body: bytes) -> Answer:
        if kind == b"M":
            self._salt = os.urandom(4)
            return pcp.salt_packet(self._salt)
        if kind == b"R":
            return self._login(body)
        if self.user is None:
            raise _Fatal(
                "authentication failed for new PCP connection", "connection not authorized"
            )
        if kind == b"X":
            self._done = True
            if self.transport is not None:
                self.transport.loseConnection()
            return b""
        handler = _COMMANDS.get(kind)
        if handler is None:
            if kind in _REFUSED:
                message, detail = _REFUSED[kind]
                return pcp.error_packet(message, detail)
            raise _Fatal("PCP processing request", f'unknown PCP packet type "{_char(kind)}"')
        if self.service.config().log_pcp_processes:
            log.info(
                "PCP: {user} from {peer}: {command}",
                user=printable(self.user),
                peer=self.peer,
                command=handler.__name__,
            )
        return handler(self, body)

    def _login(self, body: bytes) -> bytes:
        salt, self._salt = self._salt, None
        fields = pcp.parse_login(body)
        users = self.service.users()
        if fields is None or salt is None:
            raise _Fatal("authentication failed", "username and/or password does not match")
        user, answer = fields
        if users is None:
            raise _Fatal("failed to authenticate PCP user", "could not open pcp.conf")
        stored = users.users.get(user)
        expected = pcp.md5_answer(stored or "0" * 32, user, salt)
        if stored is None or not hmac.compare_digest(expected, answer):
            more = self.service.failed_logins.more(time.monotonic())
            if more is not None:
                log.warn(
                    "PCP: authentication failed for user {user} from {peer}{more}",
                    user=printable(user),
                    peer=self.peer,
                    more=more,
                )
            raise _Fatal(
                f'authentication failed for user "{user}"',
                "username and/or password does not match",
            )
        self.user = user
        return pcp.auth_ok()

    # -- the commands (each named as pgpool-II's tool) -------------------------------

    def pcp_node_count(self, body: bytes) -> Answer:
        return pcp.node_count_packet(len(self.service.snapshot().nodes))

    def pcp_node_info(self, body: bytes) -> Answer:
        text = _argument(body)
        snapshot = self.service.snapshot()
        index = _int(text)
        if index == -1:
            nodes = list(snapshot.nodes)
        else:
            nodes = [node for node in snapshot.nodes if node.index == index]
            if not nodes:
                return pcp.error_packet("informing node info failed", f"invalid node ID : {text}")
        streaming = self.service.config().clustering_mode == "streaming_replication"
        total = sum(node.weight for node in snapshot.nodes) or 1.0
        return pcp.node_info_packets(rows.node_row(node, total, streaming) for node in nodes)

    def pcp_health_check_stats(self, body: bytes) -> Answer:
        index = _int(_argument(body))
        node = next((n for n in self.service.snapshot().nodes if n.index == index), None)
        if node is None:
            return pcp.error_packet(
                "informing health check stats info failed",
                f"stats data for node ID {index} does not exist",
            )
        config = self.service.config()
        stats = self.service.health_stats().get(index)
        period = config.health_check_for(index).period
        streaming = config.clustering_mode == "streaming_replication"
        return pcp.health_check_stats_packet(rows.health_row(node, stats, period, streaming))

    def pcp_proc_count(self, body: bytes) -> Answer:
        clients, _ = self.service.connections()
        return pcp.process_count_packet([client.id for client in clients])

    def pcp_proc_info(self, body: bytes) -> Answer:
        text = _argument(body)
        wanted = _int(text)
        clients, _ = self.service.connections()
        if wanted:
            clients = [client for client in clients if client.id == wanted]
            if not clients:
                return pcp.error_packet(
                    "informing process info failed", f"invalid process ID : {text}"
                )
        return pcp.process_info_packets(rows.process_row(client) for client in clients)

    def pcp_pool_status(self, body: bytes) -> Answer:
        return pcp.pool_status_packets(rows.config_rows(self.service.config()))

    def pcp_detach_node(self, body: bytes) -> Answer:
        index = _int(_argument(body))
        problem = self._node_problem(index)
        if problem is not None:
            return problem
        why = f"node {index} is already down, or backend_flag{index} disallows failover"
        return self._changed(self.service.detach(index), b"d", "could not detach the node", why)

    def pcp_attach_node(self, body: bytes) -> Answer:
        index = _int(_argument(body))
        problem = self._node_problem(index)
        if problem is not None:
            return problem
        return self._changed(
            self.service.attach(index),
            b"c",
            "could not attach the node",
            f"node {index} is not down",
        )

    def pcp_promote_node(self, body: bytes) -> Answer:
        text = body.split(b"\0", 1)[0].decode("ascii", "replace")
        _, _, option = body.decode("ascii", "replace").partition(" ")
        switchover = option.lstrip("\0").startswith("s")
        index = _int(text.strip())
        snapshot = self.service.snapshot()
        if not any(node.index == index for node in snapshot.nodes):
            return pcp.error_packet(
                "could not process promote request", f"node id {index} is not valid"
            )
        if self.service.config().clustering_mode != "streaming_replication":
            raise _Fatal(
                "invalid pgpool mode for process promote request",
                f"not in streaming replication mode, can't promote node id {index}",
            )
        if any(node.index == index and node.role == "primary" for node in snapshot.nodes):
            raise _Fatal(
                "invalid promote request",
                f"specified node is already primary node, can't promote node id {index}",
            )
        return self._changed(
            self.service.promote(index, switchover),
            b"d",
            "could not promote the node",
            f"node {index} is down",
        )

    def pcp_reload_config(self, body: bytes) -> Answer:
        if not self.service.reload():
            return pcp.error_packet(
                "process reload config request failed",
                "the configuration has an error (see the log); the running one is kept",
            )
        return pcp.command_complete(b"z")

    def pcp_stop_pgpool(self, body: bytes) -> Answer:
        mode = _MODES.get(body[:1].decode("ascii", "replace"))
        if mode is None:
            return pcp.error_packet(
                "PCP: error while processing shutdown request",
                f'invalid shutdown mode "{body[:1].decode("ascii", "replace")}"',
            )
        log.info(
            "PCP: {user} asks for a {mode} shutdown", user=printable(self.user or ""), mode=mode
        )
        # After this answer is written: the shutdown closes what it closes.
        self.service.reactor.callLater(0, self.service.shutdown, mode)
        return pcp.command_complete(b"t")

    # -- helpers -------------------------------------------------------------------

    def _node_problem(self, index: int) -> Optional[bytes]:
        nodes = self.service.snapshot().nodes
        count = len(nodes)
        if any(node.index == index for node in nodes):
            return None
        return pcp.error_packet(
            "invalid node request",
            f"node id : {index} is out of range. node id must be between 0 and {count - 1}",
        )

    def _changed(
        self, done: defer.Deferred[bool], kind: bytes, message: str, why: str
    ) -> defer.Deferred[bytes]:
        return done.addCallback(
            lambda ok: pcp.command_complete(kind) if ok else pcp.error_packet(message, why)
        )


_COMMANDS: dict[bytes, Callable[[PcpProtocol, bytes], Answer]] = {
    b"L": PcpProtocol.pcp_node_count,
    b"I": PcpProtocol.pcp_node_info,
    b"H": PcpProtocol.pcp_health_check_stats,
    b"N": PcpProtocol.pcp_proc_count,
    b"P": PcpProtocol.pcp_proc_info,
    b"B": PcpProtocol.pcp_pool_status,
    b"D": PcpProtocol.pcp_detach_node,
    b"C": PcpProtocol.pcp_attach_node,
    b"J": PcpProtocol.pcp_promote_node,
    b"Z": PcpProtocol.pcp_reload_config,
    b"T": PcpProtocol.pcp_stop_pgpool,
    b"t": PcpProtocol.pcp_stop_pgpool,  # cluster scope: without a watchdog, this pooler
}

_REFUSED: dict[bytes, tuple[str, str]] = {
    b"d": ("pcp_detach_node -g is not supported", "detach without -g: sessions move on at once"),
    b"j": ("pcp_promote_node -g is not supported", "promote without -g"),
    b"O": ("process recovery request failed", "online recovery is not supported by pgpool-tw"),
    b"W": ("PCP: informing watchdog info failed", "watchdog is not enabled"),
    b"A": ("PCP: set configuration parameter failed", "not supported by pgpool-tw"),
}


def _char(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalnum() else f"\\x{kind.hex()}"


def _argument(body: bytes) -> str:
    return body.split(b"\0", 1)[0].decode("ascii", "replace").strip()


def _int(text: str) -> int:
    """C's atoi, as pgpool-II reads node and process ids: a bad number is 0."""
    digits = ""
    for position, char in enumerate(text.strip()):
        if char.isdigit() or (position == 0 and char in "+-"):
            digits += char
        else:
            break
    try:
        return int(digits)
    except ValueError:
        return 0


def _peer(addr: Any) -> str:
    host = getattr(addr, "host", None)
    if host is not None:
        return f"{host}:{getattr(addr, 'port', '')}"
    return "unix socket"
