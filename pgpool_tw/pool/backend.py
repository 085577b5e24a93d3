"""One server connection: startup, login, relay, and running reset queries.

A ``BackendProtocol`` is in exactly one state at a time and only the methods
here move it.  While it logs in, every message that matters is handed to its
owner (the login of the client session that asked for it); while attached it streams to that
client without parsing (see ``protocol.relay``); while pooled it belongs to the
pool and is only watched for the server going away.  It must never decide
whether it may be reused: the pool does.  ``connector.py`` opens the connection.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pgpool_tw.config.settings import BackendNode
from pgpool_tw.engine.tracker import Tracker
from pgpool_tw.engine.writer import make_writer
from pgpool_tw.logs.escape import printable
from pgpool_tw.net.transport import Writer, tune_socket
from pgpool_tw.pool.book import ServerBook
from pgpool_tw.pool.key import pool_key
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.backend_auth import BackendAuth, BackendAuthError
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.relay import LOCAL_WORDS, SessionTracker
from pgpool_tw.protocol.reset_reply import CLEAN, MORE, ResetReply
from pgpool_tw.protocol.startup import StartupMessage, ssl_request
from pgpool_tw.stats.counters import Counters
from pgpool_tw.stats.events import ServerInfo

if TYPE_CHECKING:
    from typing import Protocol as TypingProtocol

    class ServerOwner(TypingProtocol):
        """Who a new server connection reports its login to (a session's ``ServerLogin``)."""

        def server_forward(self, server: BackendProtocol, raw: bytes) -> None: ...
        def server_authenticated(self, server: BackendProtocol, raw: bytes) -> None: ...
        def server_ready(self, server: BackendProtocol) -> None: ...
        def server_failed(self, server: BackendProtocol, raw: bytes) -> None: ...
        def server_lost(self, server: BackendProtocol, why: str) -> None: ...
        def server_connect_failed(self, node: BackendNode, why: str) -> None: ...

    class ServerKeeper(TypingProtocol):
        """Who watches a server that is not logging in: the pool, the warm lane, a session."""

        def server_lost(self, server: BackendProtocol, why: str) -> None: ...


log = Logger()


# States.
NEGOTIATING = 8  # SSLRequest sent, waiting for the server's S or N
CONNECTING = 0
STARTUP = 1  # startup packet sent, authentication exchange in progress
LOGIN = 2  # authenticated; collecting ParameterStatus/BackendKeyData until ReadyForQuery
READY = 3  # logged in, not yet attached or pooled
ATTACHED = 4  # relaying for a client
RUNNING = 5  # running queries of the pooler's own (reset, SET application_name)
IDLE = 6  # in the pool
CLOSED = 7

RunCallback = Callable[["BackendProtocol", bool], None]


class BackendProtocol(Protocol):
    """A server connection from login to close."""

    #: A TCP or unix stream transport (Twisted types it as an optional ITransport).
    transport: Any

    def __init__(
        self,
        node: BackendNode,
        startup: StartupMessage,
        clock: IReactorTime,
        book: Optional[ServerBook] = None,
        tls: Optional[Any] = None,
        tls_required: bool = False,
    ) -> None:
        self.node = node
        #: The client-side TLS creator (None: plaintext) and whether TLS is a must.
        self.tls = tls
        self.tls_required = tls_required
        self.encrypted = False
        #: The server got as far as an authentication request (a refusal came later).
        self.spoke = False
        #: Every open server connection, so a shutdown can wait for all of them.
        self.book = book if book is not None else ServerBook()
        self.startup = startup
        self.pool_key = pool_key(node.index, startup)
        self.clock = clock
        self.state = CONNECTING
        self.owner: Optional[ServerOwner] = None
        self.keeper: Optional[ServerKeeper] = None
        self.params: dict[str, str] = {}
        self.pid = 0
        self.secret = 0
        self.status = m.IDLE
        #: The server asked for a password at login: never hand it to another client.
        self.asked_password = False
        #: Its node was detached or changed role since it logged in: never pooled again.
        self.stale = False
        self.sessions = 0
        #: Transaction mode (session/transaction/): the pooler's prepared statements on
        #: this server, least recently used first (max_prepared_statements bounds them),
        #: and the replayable settings clients SET here (setting -> statement).
        self.prepared: OrderedDict[bytes, None] = OrderedDict()
        self.replayed: dict[str, str] = {}
        #: SQL PREPARE statements clients made here: name -> its text (sql_prepared.py).
        self.sql_prepared: dict[str, str] = {}
        self.created = clock.seconds()
        self.idle_since = self.created
        self.tracker: Optional[SessionTracker] = None
        #: The attached session's own totals (log_disconnections), harvested with the
        #: pool's; None when it keeps none.
        self.session_counts: Optional[Counters] = None
        self.peer_write: Writer = _nowhere
        #: Sends now when nothing is queued (see engine/writer.py).
        self.send: Writer = _nowhere
        self._reader = m.MessageReader()
        self._statuses: tuple[tuple[tuple[str, str], ...], bytes] = ((), b"")
        #: The answer to run()'s queries, while they run.
        self._reply: Optional[ResetReply] = None
        self._run_done: Optional[RunCallback] = None

    def parameter_statuses(self) -> bytes:
        """Every reported parameter as ParameterStatus messages, for a client's login.

        Built once and again only when a parameter changed: most logins on a
        pooled connection replay exactly what the previous one did.
        """
        items = tuple(self.params.items())
        if items != self._statuses[0]:
            self._statuses = (items, b"".join(m.parameter_status(k, v) for k, v in items))
        return self._statuses[1]

    def info(self) -> ServerInfo:
        return ServerInfo(self.node.address, self.startup.user, self.startup.database, self.pid)

    def __repr__(self) -> str:
        return f"<server {self.node.address} pid={self.pid} state={self.state}>"

    # -- Twisted -----------------------------------------------------------------

    def connectionMade(self) -> None:
        tune_socket(self.transport)
        self.send = make_writer(self.transport)
        self.book.live.add(self)
        if self.tls is not None:
            self.state = NEGOTIATING
            self.send(ssl_request())
            return
        self._send_startup()

    def _send_startup(self) -> None:
        self.state = STARTUP
        self.send(self.startup.to_server_packet())

    def dataReceived(self, data: bytes) -> None:
        if self.state == ATTACHED:
            self.tracker.feed_server(data)  # type: ignore[union-attr]
            self.peer_write(data)
            return
        if self.state == RUNNING:
            self._run_data(data)
            return
        if self.state == NEGOTIATING:
            self._negotiated(data)
            return
        try:
            messages = self._reader.feed(data)
        except ProtocolViolation as e:
            self._broken(e.message)
            return
        for kind, body in messages:
            if self.state == CLOSED:
                return
            try:
                self._handle(kind, body)
            except ProtocolViolation as e:
                self._broken(e.message)
                return
        if (self.state == ATTACHED or self.state == RUNNING) and len(self._reader):
            # Bytes after the ReadyForQuery that completed login belong to the relay (or run).
            self.dataReceived(self._reader.take_rest())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        state, self.state = self.state, CLOSED
        self.book.harvest(self)  # a session lost with its server is never detached
        self.book.closed(self)
        why = reason.getErrorMessage() if reason is not None else "closed"
        if state == RUNNING:
            self._finish_run(False)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.server_lost(self, why)
        keeper, self.keeper = self.keeper, None
        if keeper is not None:
            keeper.server_lost(self, why)

    def _negotiated(self, data: bytes) -> None:
        """The server's one-byte answer to SSLRequest; nothing may follow it in plaintext."""
        answer, rest = data[:1], data[1:]
        if answer == b"S" and not rest:
            self.transport.startTLS(self.tls)
            self.send = self.transport.write  # through TLS from now on
            self.encrypted = True
            self._send_startup()
        elif answer == b"N" and not rest and not self.tls_required:
            self._send_startup()
        elif answer == b"N" and not rest:
            self.state = STARTUP
            self._login_failed_with(
                "08006", "the server does not support TLS, but server_tls_sslmode requires it"
            )
        else:
            self.state = STARTUP
            self._login_failed_with("08P01", "the server answered SSLRequest with garbage")

    def _login_failed_with(self, sqlstate: str, text: str) -> None:
        self._login_failed(m.error_response(sqlstate, text)[5:])

    # -- the slow path -----------------------------------------------------------

    def _handle(self, kind: int, body: bytes) -> None:
        state = self.state
        if state == STARTUP:
            self._startup_message(kind, body)
        elif state == LOGIN:
            self._login_message(kind, body)
        elif state == RUNNING:
            # A run started while this chunk was being read (a login its client left).
            self._run_data(m.message(bytes((kind,)), body))
        elif kind == m.PARAMETER_STATUS:
            self._parameter(body)
        elif kind == m.NOTICE_RESPONSE or kind == ord("A"):
            pass
        else:
            # A pooled server only speaks up to say it is going away.
            if kind == m.ERROR_RESPONSE:
                fields = m.parse_fields(body)
                why = f"{fields.get('C', '')} {fields.get('M', '')}"
            else:
                why = f"unexpected message {chr(kind)!r} while idle"
            self._broken(why)

    def _startup_message(self, kind: int, body: bytes) -> None:
        owner = self.owner
        assert owner is not None
        if kind == m.AUTHENTICATION:
            self.spoke = True
            if m.auth_code(body) == m.AUTH_OK:
                self.state = LOGIN
                owner.server_authenticated(self, m.message(b"R", body))
            else:
                self.asked_password = True
                owner.server_forward(self, m.message(b"R", body))
        elif kind == m.ERROR_RESPONSE:
            self._login_failed(body)
        elif kind == m.NOTICE_RESPONSE:
            owner.server_forward(self, m.message(b"N", body))
        elif kind != m.NEGOTIATE_PROTOCOL_VERSION:
            raise ProtocolViolation("08P01", f"unexpected message {chr(kind)!r} during login")

    def _login_message(self, kind: int, body: bytes) -> None:
        owner = self.owner
        assert owner is not None
        if kind == m.PARAMETER_STATUS:
            self._parameter(body)
        elif kind == m.BACKEND_KEY_DATA:
            self.pid, self.secret = m.parse_backend_key_data(body)
        elif kind == m.READY_FOR_QUERY:
            self.status = body[0] if body else m.IDLE
            self.state = READY
            self.book.logged_in(self)
            owner.server_ready(self)
        elif kind == m.ERROR_RESPONSE:
            self._login_failed(body)
        elif kind == m.NOTICE_RESPONSE:
            owner.server_forward(self, m.message(b"N", body))
        else:
            raise ProtocolViolation("08P01", f"unexpected message {chr(kind)!r} during login")

    def _login_failed(self, body: bytes) -> None:
        owner, self.owner = self.owner, None
        self.state = CLOSED
        self.transport.loseConnection()
        if owner is not None:
            owner.server_failed(self, m.message(b"E", body))

    def _parameter(self, body: bytes) -> None:
        name, value = m.parse_parameter_status(body)
        self.params[name] = value

    def _broken(self, why: str) -> None:
        log.warn(
            "server={server} protocol error: {why}; closing", server=self.node.address, why=why
        )
        self.transport.abortConnection()

    def answer(self, auth: BackendAuth, raw: bytes) -> str:
        """Answer this server's authentication request ``raw`` with ``auth``; the reason
        it cannot be answered, or '' (an owner's one call for every login it answers)."""
        try:
            reply = auth.answer(raw)
        except BackendAuthError as e:
            return str(e)
        if reply:
            self.send(reply)
        return ""

    # -- attach and detach (called by the client session) ------------------------

    def attach(
        self, session: ServerKeeper, peer_write: Writer, tracker: Optional[SessionTracker] = None
    ) -> SessionTracker:
        """Start relaying to a client; returns the tracker both legs share.

        The client's ``session`` keeps the server from now on (it is told if the
        server goes away); ``tracker`` carries on a session relayed so far by
        someone else (the warm lane).
        """
        self.owner = None
        self.keeper = session
        # The session's own totals (log_disconnections); a keeper without any has none.
        self.session_counts = getattr(session, "counts", None)
        self.sessions += 1
        if tracker is None:  # a session the warm lane started was counted there
            self.book.totals.of(self.pool_key).logins += 1
        self.peer_write = peer_write
        self.tracker = (
            tracker if tracker is not None else Tracker(self.params, self.status, LOCAL_WORDS)
        )
        self.state = ATTACHED
        return self.tracker

    def detach(self) -> None:
        """Stop relaying; the pool decides what comes next."""
        if self.tracker is not None:
            self.status = self.tracker.status
            self.book.harvest(self)
        self.tracker = None
        self.session_counts = None
        self.owner = None
        self.keeper = None
        self.peer_write = _nowhere
        if self.state != CLOSED:
            self.state = READY

    # -- the pooler's own queries ------------------------------------------------

    def run(self, queries: list[str], done: RunCallback) -> None:
        """Run simple queries, sent together; ``done(self, ok)`` once all answered.

        Each is its own Query message, so one that fails does not stop the
        others, and one round trip serves them all.  ``ok`` is false when any
        failed, the server closed, or the transaction state afterwards is not idle.
        """
        self.run_batch(len(queries), b"".join(m.query(sql) for sql in queries), done)

    def run_batch(self, count: int, messages: bytes, done: RunCallback) -> None:
        """``run`` with its ``count`` Query messages already built.

        For a batch sent after every session (the pool's reset): built once, not per session.
        The answer is judged by ``protocol.reset_reply`` (the warm lane's C reset follows
        the same rule): ``ok`` only when it is CLEAN.
        """
        self.state = RUNNING
        self._run_done = done
        if not count:
            self._reply = None
            self._finish_run(self.status == m.IDLE)
            return
        self._reply = ResetReply(count, self.params, self.status)
        self.send(messages)

    def fetch(self, sql: str, reply: ResetReply, done: RunCallback) -> None:
        """Run one query of the pooler's own whose rows it wants back, on a connection no
        client uses (checks/sr_check.py's): ``reply`` (one ReadyForQuery owed) reads the
        answer and keeps the rows, as checks/rows.py's RowsReply does; ``done(self, ok)``
        as for run().  The same RUNNING state, so a server lost mid-query is told the same.
        """
        self.state = RUNNING
        self._run_done = done
        self._reply = reply
        self.send(m.query(sql))

    def _run_data(self, data: bytes) -> None:
        reply = self._reply
        assert reply is not None
        verdict = reply.feed(data)
        if verdict == MORE:
            return
        self._reply = None
        self.status = reply.status
        if reply.error is not None:
            fields = m.parse_fields(reply.error)
            log.warn(
                "server={server} query failed: {code} {text}",
                server=self.node.address,
                code=printable(fields.get("C", "")),
                text=printable(fields.get("M", "")),
            )
        self._finish_run(verdict == CLEAN)

    def _finish_run(self, ok: bool) -> None:
        done, self._run_done = self._run_done, None
        if self.state == RUNNING:
            self.state = READY
        if done is not None:
            done(self, ok)

    def was_reset(self) -> None:
        """reset_query_list ran (its DISCARD ALL drops prepared statements and settings):
        transaction mode's bookkeeping of this session starts afresh."""
        self.prepared.clear()
        self.replayed.clear()
        self.sql_prepared.clear()

    # -- pooled life -------------------------------------------------------------

    def park(self, keeper: ServerKeeper) -> None:
        """Sit idle in the pool, watched by ``keeper``."""
        self.owner = None
        self.keeper = keeper
        self.state = IDLE
        self.idle_since = self.clock.seconds()

    def terminate(self) -> None:
        """Say goodbye politely and close; the server rolls back what is open.

        The Terminate goes out at once when nothing is queued, so it reaches the
        server even when an immediate shutdown aborts the connection right after.
        """
        self.owner = None
        self.keeper = None
        if self.state != CLOSED and self.transport is not None:
            self.send(m.terminate())
            self.transport.loseConnection()
        self.state = CLOSED

    @property
    def connected_ok(self) -> bool:
        return self.state != CLOSED and bool(self.connected)


def _nowhere(data: bytes) -> None:
    """The writer of a server connection that no client is attached to."""
