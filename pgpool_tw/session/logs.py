"""What a session writes to the log: its statements, and its end.

* ``log_statement`` (pgpool-II's): ``statement: <text>`` for every simple Query and Parse
  a client sends; ``log_per_node_statement``: ``DB node id: N backend pid: P statement:
  <text>`` for each server the statement is sent to.  Both lines are pgpool-II's.
* ``log_disconnections`` (pgpool-II's, in PostgreSQL's words): ``disconnection: session
  time: H:MM:SS.mmm user=... database=... host=... port=...`` with the bytes the session
  received from its client and sent to it.

Statements must be seen to be logged, and the fast paths (the C relay, the transaction
lane, the C router) do not show them to Python: a session decides once, when it starts
relaying, whether it logs statements (:func:`statements_for`), and only then takes the
path where Python frames its client's messages.  When neither setting is on, nothing
here runs per message.  Client-supplied text goes through ``logs.escape.printable``
first, so a statement is always one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from pgpool_tw.logs.escape import printable
from pgpool_tw.session.transaction import TransactionStream

if TYPE_CHECKING:
    from pgpool_tw.config.settings import Config
    from pgpool_tw.net.transport import Writer
    from pgpool_tw.protocol.startup import StartupMessage
    from pgpool_tw.stats.counters import Counters

__all__ = [
    "LoggedTransactionStream",
    "StatementFrames",
    "Statements",
    "log_disconnection",
    "statement_of",
    "statements_for",
]

log = Logger()

_LENGTH = Struct("!I").unpack_from
_QUERY = 81  # 'Q'
_PARSE = 80  # 'P'

#: (node, backend pid) of each server a statement is sent to.
Targets = Sequence[tuple[int, int]]


class Statements:
    """log_statement and log_per_node_statement for one session (or one routing rule set)."""

    __slots__ = ("client", "plain", "per_node")

    def __init__(self, plain: bool, per_node: bool, client: Optional[str] = None) -> None:
        self.plain = plain
        self.per_node = per_node
        self.client = client

    def __call__(self, text: str, targets: Targets) -> None:
        """Log ``text``, sent to ``targets``."""
        text = printable(text)
        if self.plain:
            log.info("statement: {statement}", statement=text, client=self.client)
        if self.per_node:
            for node, pid in targets:
                log.info(
                    "DB node id: {node} backend pid: {pid} statement: {statement}",
                    node=node,
                    pid=pid,
                    statement=text,
                    client=self.client,
                )


def statements_for(
    config: Config, client: Optional[Callable[[], str]] = None
) -> Optional[Statements]:
    """The session's statement log, or None when neither setting asks for one; ``client``
    gives the client's address, asked only then (formatting it costs a session start)."""
    if config.log_statement or config.log_per_node_statement:
        return Statements(
            config.log_statement,
            config.log_per_node_statement,
            client() if client is not None else None,
        )
    return None


def statement_of(kind: int, body: bytes) -> Optional[str]:
    """The SQL text of a Query or Parse body (after the 5-byte header); None otherwise."""
    if kind == _QUERY:
        end = body.find(b"\0")
    elif kind == _PARSE:
        start = body.find(b"\0") + 1
        end = body.find(b"\0", start)
        body = body[start:end] if start and end >= 0 else b""
        end = len(body)
    else:
        return None
    return body[: end if end >= 0 else len(body)].decode("utf-8", "replace")


class StatementFrames:
    """Follows a client stream that goes to one server (session mode, Python's relay)
    and logs its statements: headers are walked, only Query and Parse bodies kept."""

    __slots__ = ("_log", "_targets", "_head", "_skip", "_kind", "_body", "_need", "_lost")

    def __init__(self, statements: Statements, node: int, pid: int) -> None:
        self._log = statements
        self._targets = ((node, pid),)
        self._head = b""
        self._skip = 0  # body bytes of a message not logged, still to come
        self._kind = 0  # the Query or Parse being collected
        self._body = bytearray()
        self._need = 0
        #: A length no server accepts: the server ends the session, nothing more is read.
        self._lost = False

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size and not self._lost:
            if self._skip:
                take = min(self._skip, size - pos)
                pos += take
                self._skip -= take
            elif self._need:
                take = min(self._need, size - pos)
                self._body += data[pos : pos + take]
                pos += take
                self._need -= take
                if not self._need:
                    body, self._body = bytes(self._body), bytearray()
                    self._statement(self._kind, body)
            else:
                head = self._head + data[pos : pos + 5 - len(self._head)]
                pos += len(head) - len(self._head)
                if len(head) < 5:
                    self._head = head
                    return
                self._head = b""
                length = _LENGTH(head, 1)[0]
                if length < 4:
                    self._lost = True
                    return
                if head[0] in (_QUERY, _PARSE):
                    self._kind, self._need = head[0], length - 4
                else:
                    self._skip = length - 4

    def _statement(self, kind: int, body: bytes) -> None:
        text = statement_of(kind, body)
        if text is not None:
            self._log(text, self._targets)

    def writer(self, send: Writer) -> Writer:
        """``send``, logging what goes through it first."""
        feed = self.feed

        def write(data: bytes) -> None:
            feed(data)
            send(data)

        return write


class LoggedTransactionStream(TransactionStream):
    """A transaction-mode client's stream that logs each Query and Parse as it goes to
    the server the client holds (chosen for sessions that log statements only)."""

    __slots__ = ("log_statements",)

    def __init__(self, statements: Statements, *args: Any) -> None:
        super().__init__(*args)
        self.log_statements = statements

    def _client_message(self, kind: int, msg: bytes) -> None:
        server = self.server
        if server is not None and kind in (_QUERY, _PARSE):
            text = statement_of(kind, msg[5:])
            if text is not None:
                self.log_statements(text, ((server.node.index, server.pid),))
        super()._client_message(kind, msg)


def log_disconnection(
    client: str, startup: StartupMessage, seconds: float, counts: Optional[Counters]
) -> None:
    """PostgreSQL's disconnection line, with the session's bytes (pgpool-tw's addition)."""
    host, _, port = client.rpartition(":")
    if not host:
        host, port = "[local]", ""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    duration = f"{hours}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"
    fields: dict[str, Any] = {
        "session_time": duration,
        "session_seconds": round(seconds, 3),
        "user": printable(startup.user),
        "database": printable(startup.database),
        "host": host,
        "client": client,
        "bytes_received": counts.bytes_in if counts is not None else None,
        "bytes_sent": counts.bytes_out if counts is not None else None,
    }
    log.info(
        "disconnection: session time: {session_time} user={user} database={database} "
        "host={host}" + (" port={port}" if port else "") + " bytes_received={bytes_received} "
        "bytes_sent={bytes_sent}",
        port=port,
        **fields,
    )


#: A routed session's statement log (``RoutingRules.log_statement``).
RoutedLog = Callable[[str, Targets], None]
