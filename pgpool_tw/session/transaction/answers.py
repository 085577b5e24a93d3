"""The server's answers to a transaction-mode client: forwarded in runs as they come,
what each settles of what the server owes popped, the pooler's hidden statements'
answers dropped and its own answers put in their places.

Each function here is a method of ``TransactionStream`` (stream.py assigns it in the
class body), kept in this file so that each file holds one concern."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.session.transaction.owed import (
    _BIND_COMPLETE,
    _CLOSE_COMPLETE,
    _COMMAND_COMPLETE,
    _E_BIND,
    _E_CLOSE,
    _E_DESCRIBE,
    _E_EXECUTE,
    _E_FAKE,
    _E_HIDDEN_CLOSE,
    _E_HIDDEN_PARSE,
    _E_HIDDEN_QUERY,
    _E_PARSE,
    _E_QUERY,
    _EMPTY_QUERY,
    _ERROR,
    _LENGTH,
    _NO_DATA,
    _ONE_BY_ONE,
    _OWED_NOTHING,
    _PARAMETER_STATUS,
    _PARSE_COMPLETE,
    _READY,
    _ROW_DESCRIPTION,
    _SIMPLE,
    _SUSPENDED,
    _UNIT_ENDS,
    IDLE,
)

if TYPE_CHECKING:
    from pgpool_tw.session.transaction.stream import TransactionStream


def feed_server(self: TransactionStream, data: bytes) -> None:
    """The held server's chunk (``BackendProtocol`` calls its tracker)."""
    self.bytes_out += len(data)
    out = self._out
    expect = self._expect
    n = len(data)
    pos = 0
    run = -1  # start of bytes forwarded as they are
    if self._s_need:
        need = self._s_need
        self._s_body += data[:need]
        if n < need:
            self._s_need = need - n
            return
        self._s_need = 0
        body, self._s_body = self._s_body, b""
        self._body(self._s_kind, body)
        pos = need
    elif self._s_skip:
        take = min(self._s_skip, n)
        self._s_skip -= take
        pos = take
        if not self._s_skip and self._s_fakes:
            self._s_fakes = False
            if not self._s_drop:
                out.append(data[:take])
            self._drain_fakes()
        elif not self._s_drop:
            run = 0
    elif self._s_head:
        cut = len(self._s_head)
        head = self._s_head + data[: 5 - cut]
        if len(head) < 5:
            self._s_head = head
            return
        self._s_head = b""
        pos = self._message(data, head, 0, 5 - cut, out)
    while 0 <= pos < n:
        if n - pos < 5:
            if run >= 0:
                out.append(data[run:pos])
                run = -1
            self._s_head = data[pos:]
            pos = n
            break
        kind = data[pos]
        one_by_one = _ONE_BY_ONE[expect[0][0] if expect else _OWED_NOTHING]
        if one_by_one is not None and kind not in one_by_one:
            # The common message (a DataRow...): forwarded with its neighbours as
            # they came, settling nothing owed.
            if run < 0:
                run = pos
            end = pos + 1 + _LENGTH(data, pos + 1)[0]
            if end > n:
                self._s_skip = end - n
                self._s_drop = False
                pos = n
                break
            pos = end
            continue
        if run >= 0:
            out.append(data[run:pos])
            run = -1
        pos = self._message(data, data, pos, pos + 5, out)
    if run >= 0:
        out.append(data[run:])
    self._flush()
    self._maybe_release()


def _message(
    self: TransactionStream,
    data: bytes,
    head: bytes,
    at: int,
    body_start: int,
    out: list[bytes],
) -> int:
    """One server message whose header is ``head[at:at+5]`` and whose body starts at
    ``body_start`` in ``data`` (the header may have begun in the chunk before).
    Returns where the next message starts, or -1 when this one runs past the chunk."""
    kind = head[at]
    end = body_start - 4 + max(_LENGTH(head, at + 1)[0], 4)
    n = len(data)
    if kind in (_READY, _PARAMETER_STATUS):
        if end > n:
            self._s_kind = kind
            self._s_body = data[body_start:]
            self._s_need = end - n
            return -1
        self._body(kind, data[body_start:end])
        return end
    drop = self._settle(kind)
    if not drop:
        whole = data[at:end] if head is data else head[at : at + 5] + data[body_start:end]
        out.append(whole)
    if end > n:
        self._s_skip = end - n
        self._s_drop = drop
        self._s_fakes = True
        return -1
    self._drain_fakes()
    return end


def _settle(self: TransactionStream, kind: int) -> bool:
    """What a server message (not ReadyForQuery/ParameterStatus) settles of what the
    server owes; True when the client must not see it."""
    expect = self._expect
    if not expect:
        return False  # a notice or notification between statements
    head, detail = expect[0]
    if head == _E_HIDDEN_QUERY:
        if kind == _ERROR:
            self._failed = True
        return True
    if kind == _ERROR:
        if head in _SIMPLE:
            self._failed = True
            return False
        self._skip_to_sync(detail, head)
        return False
    if kind == _PARSE_COMPLETE:
        if head in (_E_PARSE, _E_HIDDEN_PARSE):
            if detail:
                self.names.parsed.add(detail)
            expect.popleft()
            return head == _E_HIDDEN_PARSE
        return False
    if kind == _CLOSE_COMPLETE:
        if head in (_E_CLOSE, _E_HIDDEN_CLOSE):
            expect.popleft()
            return head == _E_HIDDEN_CLOSE
        return False
    if kind == _BIND_COMPLETE:
        if head == _E_BIND:
            expect.popleft()
        return False
    if kind in (_ROW_DESCRIPTION, _NO_DATA):
        if head == _E_DESCRIBE:
            expect.popleft()
        return False
    if kind in (_COMMAND_COMPLETE, _EMPTY_QUERY, _SUSPENDED):
        if head == _E_EXECUTE:
            expect.popleft()
        return False
    return False


def _skip_to_sync(self: TransactionStream, detail: Any, head: int) -> None:
    """An ErrorResponse in a batch: the server skips every message up to the Sync, so
    nothing they owed comes, and statements they would have parsed do not exist."""
    expect = self._expect
    server = self.server
    prepared = server.prepared if server is not None else None
    self._failed = True
    while expect and expect[0][0] not in _UNIT_ENDS:
        kind, detail = expect.popleft()
        if kind in (_E_PARSE, _E_HIDDEN_PARSE) and detail and prepared is not None:
            prepared.pop(detail, None)


def _drain_fakes(self: TransactionStream) -> None:
    """The pooler's own answers now due, in their places."""
    expect = self._expect
    while expect and expect[0][0] == _E_FAKE:
        _, (reply, query) = expect.popleft()
        self._out.append(reply)
        if query:
            # A whole Query the pooler answered: its ReadyForQuery too.
            self._out.append(m.ready_for_query(self.status))
            self.pending -= 1


def _body(self: TransactionStream, kind: int, body: bytes) -> None:
    if kind == _PARAMETER_STATUS:
        server = self.server
        try:
            name, value = m.parse_parameter_status(body)
        except ProtocolViolation:
            name = ""
        if name and server is not None:
            server.params[name] = value
        expect = self._expect
        if not expect or expect[0][0] != _E_HIDDEN_QUERY:
            self._out.append(m.message(b"S", body))
        return
    status = body[0] if body else IDLE
    expect = self._expect
    if not expect:
        return  # a ReadyForQuery nobody asked for: the server is confused; drop it
    head, detail = expect.popleft()
    if head == _E_HIDDEN_QUERY:
        if self._failed and detail is not None and self.server is not None:
            self.sql.undo(self.server.sql_prepared, detail)
        self._failed = False
        self._drain_fakes()
        return
    # The end of a client's Query, Sync or FunctionCall.
    while head not in _UNIT_ENDS and expect:
        head, detail = expect.popleft()  # answers an error skipped
    self.status = status
    self.pending -= 1
    self.queries += 1
    if status == IDLE:
        self.xacts += 1
    if not self.pending:
        self._answered_all()
    self._unit_ended(detail, self._failed, head == _E_QUERY)
    self._failed = False
    self._out.append(m.message(b"Z", body))
    self._drain_fakes()


def _fake(self: TransactionStream, reply: bytes, query: bool = False) -> None:
    """Answer in the server's place, after whatever the server owes before it."""
    self._expect.append((_E_FAKE, (reply, query)))
    if len(self._expect) == 1:
        self._drain_fakes()
