"""Twisted glue for one client connection: bytes to its ``Session``, or to its server.

``FrontendProtocol`` owns only what needs the socket: the send-now writer, TLS,
the relay's fast path (while a session relays, a chunk goes through the session
tracker straight to the server, or the C loop forwards it without calling
here), flow control between the two legs, and the chunk count that
client_idle_limit watches.  Every decision is the session state machine's
(machine.py), which it feeds and which calls back through ``ClientIO``.
``FrontendFactory`` is the sessions' shared ``SessionContext`` as a Twisted
factory.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from pgpool_tw.engine import fastpoll
from pgpool_tw.engine.writer import make_writer
from pgpool_tw.net import accepted
from pgpool_tw.net.transport import PeerProducer, Writer, link, tune_socket, unlink
from pgpool_tw.pool.backend import BackendProtocol
from pgpool_tw.protocol.relay import SessionTracker
from pgpool_tw.protocol.startup import StartupMessage
from pgpool_tw.session.context import SessionContext
from pgpool_tw.session.logs import StatementFrames, statements_for
from pgpool_tw.session.machine import Session
from pgpool_tw.session.states import RELAY

if TYPE_CHECKING:
    from pgpool_tw.engine._speedups import Relay, Router, TxClient, TxLane, TxServer
    from pgpool_tw.session.routed import RoutedStream


class FrontendFactory(SessionContext, Factory):
    """Everything client sessions share, building one ``FrontendProtocol`` per client."""

    noisy = False

    def buildProtocol(self, addr: Any) -> FrontendProtocol:
        return FrontendProtocol(self, addr)


class FrontendProtocol(Protocol):
    """A client connection from its first byte to its close."""

    #: A TCP or unix stream transport (Twisted types it as an optional ITransport).
    transport: Any

    def __init__(self, factory: FrontendFactory, address: Any = None) -> None:
        self.factory = factory
        #: The client's address as the listener saw it (what getPeer() returns).
        self._address = address
        self.session = Session(factory, self)
        #: True exactly while bytes are relayed; checked first on every chunk.
        self.relaying = False
        self.tracker: Optional[SessionTracker] = None
        #: Sends now when nothing is queued (see engine/writer.py).
        self.send: Writer = discard
        self.server_write: Writer = discard
        #: Chunks received while relaying; client_idle_limit compares it across ticks.
        self.received = 0
        self._idle_mark = -1
        self._idle_since = 0.0
        self._producers: Optional[tuple[PeerProducer, PeerProducer]] = None
        #: The C loop's handle while it forwards this session (fastpoll.start_relay).
        self._relay: Optional[Relay] = None
        #: A routed session's sockets on the C loop's router (fastpoll.start_router),
        #: and the stream it routes for.
        self._router: Optional[Router] = None
        self._routed: Optional[RoutedStream] = None
        #: A transaction-mode client on its pool key's lane (engine/_txlane.c).
        self._tx: Optional[TxClient] = None
        #: Client bytes from a Query the tracker stopped before (pgpool-II's SQL
        #: commands), until the Query is whole and the session has decided it.
        self._held: Optional[bytes] = None
        #: The C relay taken off the loop while a stopped Query is held.
        self._paused: Optional[Relay] = None
        #: When the connection was accepted (the reactor's clock), and its number for
        #: the console (SHOW CLIENTS' id, KILL_CLIENT's argument).
        self.connected_at = 0.0
        self.id = next(_IDS)

    # -- Twisted -----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_at = self.factory.reactor.seconds()
        if not self.factory.listeners_tuned:
            tune_socket(self.transport)
        self.send = make_writer(self.transport)
        self.factory.clients.add(self)
        self.session.connected(self.factory.accepted_since)
        if self.factory.draining:
            self.session.drain()  # accepted from the backlog as the listeners closed

    def dataReceived(self, data: bytes) -> None:
        if self.relaying:
            if self._held is not None:
                self._hold(data)
                return
            self.received += 1
            at = self.tracker.feed_client(data)  # type: ignore[union-attr]
            if at < 0:
                self.server_write(data)
                return
            if at:
                self.server_write(data[:at])
            self._stopped(data[at:])
            return
        self.session.client_data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.clients.discard(self)
        self.session.client_lost()

    # -- ClientIO: what the session asks of the connection -----------------------

    @property
    def peer(self) -> str:
        """``host:port`` or ``local`` for logs and events.

        Formatted when asked, not per connection: most connections never log.
        """
        address = self._address
        if address is None and self.transport is not None:
            address = self.transport.getPeer()
        return "?" if address is None else _describe(address)

    def close(self) -> None:
        self.transport.loseConnection()

    def finish(self) -> None:
        """Close after what was written, at once when nothing is queued."""
        accepted.close(self.transport)  # runs connectionLost now when nothing is queued

    def start_tls(self, context: Any) -> None:
        self.transport.startTLS(context)
        self.send = self.transport.write  # through TLS from now on

    def peer_host(self) -> Optional[str]:
        return getattr(self.transport.getPeer(), "host", None)

    def peer_common_name(self) -> Optional[str]:
        """The CN of the client's verified certificate, if it sent one over TLS."""
        if not self.session.ssl:
            return None
        certificate = self.transport.getPeerCertificate()
        if certificate is None:
            return None
        name = certificate.get_subject().CN
        return str(name) if name is not None else None

    def start_relay(
        self,
        server: BackendProtocol,
        tracker: SessionTracker,
        routed: bool,
        lb: Optional[BackendProtocol] = None,
    ) -> None:
        """Bytes flow both ways from now on, through the C loop where it can take them.

        A routed session's stream (``routed.RoutedStream``) sends to its servers itself:
        chunks go to its ``feed_client`` only, and flow control pairs the client with
        the primary's leg.  On the C loop, its router routes the plain statements Python
        armed it for (engine/_route.c) and hands every other chunk to the stream.
        """
        self.tracker = tracker
        self.server_write = discard if routed else server.send
        self._producers = link(self.transport, server.transport)
        factory = self.factory
        statements = None if routed else statements_for(factory.config, lambda: self.peer)
        if routed:
            self._start_router(tracker, server, lb)  # type: ignore[arg-type]
        elif statements is not None:
            # log_statement: Twisted reads the client, and each chunk goes through the
            # statement log on its way to the server (decided here, once: with the
            # settings off nothing is added per chunk).
            frames = StatementFrames(statements, server.node.index, server.pid)
            self.server_write = frames.writer(server.send)
        else:
            self._relay = fastpoll.start_relay(
                factory.reactor, tracker, self.transport, server.transport, self._stopped
            )
        self.relaying = True
        self._idle_since = factory.reactor.seconds()

    def _start_router(
        self, stream: RoutedStream, server: BackendProtocol, lb: Optional[BackendProtocol]
    ) -> None:
        """On the C loop, the session's sockets go to a router; elsewhere (the plain
        Twisted loop, TLS) Twisted reads them and ``dataReceived`` hands them on."""
        factory = self.factory
        router = fastpoll.start_router(
            factory.reactor,
            self.transport,
            (server.transport, lb.transport if lb is not None else None),
            factory.fast_shapes,
            (
                self.dataReceived,
                stream.primary.feed_server,
                stream.lb.feed_server if stream.lb is not None else None,
            ),
            stream.adopt,
        )
        if router is not None:
            self._router = router
            self._routed = stream
            stream.fast = router
            factory.fast_streams.add(stream)
            stream.rearm()

    def start_tx_relay(
        self,
        stream: SessionTracker,
        lane: Optional[TxLane] = None,
        on_adopt: Optional[Callable[[TxServer, int, bytes, int], object]] = None,
        expired: Optional[Callable[[], object]] = None,
    ) -> None:
        """Transaction pooling: every chunk goes to the stream, which sends to whichever
        server the client holds.  With a ``lane`` (the C loop) the client's socket is the
        lane's: while armed (``tx_arm``) it runs simple transactions itself and hands
        every other chunk here; disarmed, Twisted reads it."""
        self.tracker = stream
        self.server_write = discard
        self.relaying = True
        self._idle_since = self.factory.reactor.seconds()
        if lane is not None and on_adopt is not None and expired is not None:
            self._tx = fastpoll.tx_client(
                lane, self.transport, self.dataReceived, on_adopt, expired
            )

    def tx_arm(self, tag: int) -> None:
        """The client is between transactions: its next chunk may run on the lane."""
        if self._tx is not None:
            self._tx.arm(tag)

    def tx_disarm(self) -> None:
        """PAUSE: the client's next chunk is Python's (which holds its transaction)."""
        if self._tx is not None:
            self._tx.disarm()

    def tx_hold(self, server: BackendProtocol) -> bool:
        """A pinned client's server kept on the lane between its transactions; False
        when the client or the server is not on the C loop (Twisted reads both)."""
        tx = self._tx
        if tx is None:
            return False
        held = fastpoll.tx_server(server, -1)
        if held is None:
            return False
        self.tx_detach(server)
        tx.hold(held)
        return True

    def tx_fast_server(self) -> Optional[BackendProtocol]:
        """The server of the transaction the lane runs for the client now, if any."""
        tx = self._tx
        server = tx.server if tx is not None else None
        return server.backend if server is not None else None

    def tx_lane_client(self) -> Optional[TxClient]:
        """The client's TxClient on the C lane, if it has one (read by cancel.py)."""
        return self._tx

    def tx_stop(self) -> None:
        """The session ends: the lane lets the client go (a transaction it runs is the
        session's first)."""
        tx, self._tx = self._tx, None
        if tx is not None:
            self.received += tx.received
            counts = self.session.counts
            if counts is not None:  # log_disconnections: what the lane ran for it
                counts.bytes_in += tx.bytes_in
                counts.bytes_out += tx.bytes_out
            tx.forget()

    def tx_attach(self, server: BackendProtocol) -> None:
        """Flow control pairs the client with the server it holds now."""
        if self._producers is None:
            self._producers = link(self.transport, server.transport)

    def tx_detach(self, server: BackendProtocol) -> None:
        producers, self._producers = self._producers, None
        if producers is not None:
            unlink(self.transport, server.transport, producers)

    def drop_leg(self, server: BackendProtocol) -> None:
        """A routed session lets a server go: Twisted reads it again."""
        if self._router is not None:
            fastpoll.stop_router(self._router, 2)

    def stop_relay(self, server: BackendProtocol) -> None:
        self.relaying = False
        self._leave_c_loop()
        self.server_write = discard
        if self._producers is not None:
            unlink(self.transport, server.transport, self._producers)
            self._producers = None

    def drain_watch(
        self,
        server: Optional[BackendProtocol],
        stream: Optional[RoutedStream],
        check: Callable[[], object],
    ) -> int:
        """A drain: this session's bytes go through Python from now on (the C relay,
        router or transaction lane lets them go), and ``check`` runs in the turn after
        the server side sent the client anything.  Returns the client's chunks since
        the session began relaying (0: it has not spoken since its login).  Only a
        draining session pays for the watch: the normal path is untouched."""
        self._leave_c_loop()
        self._paused = None  # a held Query's end must not put it back on the C loop
        self.tx_stop()
        if stream is not None:
            stream.client_send = self._watching(stream.client_send, check)
        elif server is not None:
            server.peer_write = self._watching(server.peer_write, check)
        return self.received

    def _watching(self, send: Writer, check: Callable[[], object]) -> Writer:
        call_later = self.factory.reactor.callLater
        due = [False]

        def run() -> None:
            due[0] = False
            check()

        def write(data: bytes) -> None:
            send(data)
            if not due[0]:
                due[0] = True
                call_later(0, run)

        return write

    def drain(self) -> None:
        self.session.drain()

    @property
    def is_console(self) -> bool:
        return self.session.is_console

    def replay(self, data: bytes) -> None:
        """Bytes the client sent before its session relayed go through the relay now."""
        self.dataReceived(data)

    def _stopped(self, rest: bytes) -> None:
        """The tracker's walk stopped (here or in the C loop) before ``rest``: at the
        client's Terminate, or at a Query the session may answer itself (``local``)."""
        if not self.tracker.local:  # type: ignore[union-attr]
            self.session.client_terminated()
            return
        self._held = b""
        self._hold(rest)

    def _hold(self, data: bytes) -> None:
        """Keep the client's bytes from a stopped Query until it is whole, off the C
        loop meanwhile; then the session answers it or it goes to the server."""
        held = self._held + data if self._held else data
        size = 1 + int.from_bytes(held[1:5], "big") if len(held) >= 5 else _HELD_MAX
        if len(held) < size <= _HELD_MAX:
            self._held = held
            if self._relay is not None:
                self._pause_relay()
            return
        self._held = None
        tracker = self.tracker
        assert tracker is not None
        answer = None
        if len(held) >= size >= 6 and tracker.in_sync:
            answer = self.session.local_query(held[:size], tracker.status)
        if answer is not None:
            self.send(answer)
        else:  # the server's to answer: a statement of its own, or one it must queue
            size = max(size, 5)
            sent = min(size, len(held))
            tracker.pass_query(size, sent)
            self.server_write(held[:sent])
        if self._paused is not None:
            self._resume_relay()
        if len(held) > size:
            self.dataReceived(held[size:])

    def _pause_relay(self) -> None:
        self._paused = self._relay
        self._leave_c_loop()

    def _leave_c_loop(self) -> None:
        """Twisted reads the session's sockets from now on: the C relay or router lets
        them go (their chunk counts kept for client_idle_limit)."""
        relay, self._relay = self._relay, None
        if relay is not None:
            fastpoll.stop_relay(relay)
            self.received += relay.received
        router, self._router = self._router, None
        if router is not None:
            fastpoll.stop_router(router)
            self.received += router.received
        routed, self._routed = self._routed, None
        if routed is not None:
            self.factory.fast_streams.discard(routed)
            routed.detach_fast()

    def _resume_relay(self) -> None:
        self._paused = None
        server, tracker = self.session.server, self.tracker
        if server is not None and tracker is not None and self.relaying:
            self._relay = fastpoll.start_relay(
                self.factory.reactor, tracker, self.transport, server.transport, self._stopped
            )

    # -- what the warm lane and the service ask ----------------------------------

    @property
    def state(self) -> int:
        return self.session.state

    @property
    def address(self) -> Any:
        """The client's address as the listener saw it (the warm lane learns it)."""
        return self._address

    @property
    def key(self) -> Any:
        """The session's pool key, once its startup packet is read."""
        return self.session.key

    @property
    def startup(self) -> Optional[StartupMessage]:
        return self.session.startup

    @property
    def startup_raw(self) -> Optional[bytes]:
        return self.session.startup_raw

    @property
    def ssl(self) -> bool:
        return self.session.ssl

    @property
    def pinned(self) -> tuple[str, ...]:
        """Why a transaction-mode client keeps its server (the stats snapshot)."""
        return self.session.pinned

    @property
    def auth_ok_sent(self) -> bool:
        return self.session.auth_ok_sent

    @property
    def serving(self) -> Optional[BackendProtocol]:
        """The server this client's session holds now: its own (session mode), the one
        of its transaction (transaction mode, the lane's included), or None."""
        session = self.session
        if session.tx is not None:
            return session.tx.server or self.tx_fast_server()
        return session.server

    def tls_answered(self) -> None:
        self.session.tls_answered()

    def gss_answered(self) -> None:
        self.session.gss_answered()

    def resume(
        self, server: BackendProtocol, tracker: SessionTracker, secret: int, owed: bytes
    ) -> None:
        """Carry on a session the warm lane started (see lane/warm.py)."""
        self.session.resume(server, tracker, secret, owed)

    def shut_down(self) -> None:
        self.session.shut_down()

    def refuse_waiting(self) -> None:
        self.session.refuse_waiting()

    def idle_tick(self, now: float, limit: float) -> None:
        """client_idle_limit: a session idle that long between queries is closed (its
        own limit when it set one with PGPOOL SET; 0: never)."""
        overrides = self.session.overrides
        if overrides is not None:
            limit = overrides.get("client_idle_limit", limit)
        if limit <= 0:
            return
        tracker = self.tracker
        if not self.relaying or tracker is None or self.session.state != RELAY:
            return
        received = self.received + (self._relay.received if self._relay is not None else 0)
        if self._router is not None:
            received += self._router.received
        if self._tx is not None:
            received += self._tx.received
        if received != self._idle_mark or tracker.pending:
            self._idle_mark = received
            self._idle_since = now
        elif now - self._idle_since >= limit:
            self.session.idle_limit_reached(limit)


#: A stopped Query longer than this is not pgpool-II's: it goes to the server as it comes.
_HELD_MAX = 8192

#: Client connection numbers, from 1, for the process.
_IDS = itertools.count(1)


def discard(data: bytes) -> None:
    """The writer of a side that has nowhere to send yet (client bytes before a server)."""


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return f"{host}:{address.port}"
    return "local"
