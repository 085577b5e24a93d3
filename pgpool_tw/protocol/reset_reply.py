"""The reset's answer: what the server sends back for the pooler's own queries.

One rule, held twice on purpose and kept equal by tests: here for Python
(``pool/backend.py``'s ``run_batch``: reset_query_list after a session, SET
application_name before one) and in ``engine/_reset.c`` for the warm lane, which
resets a server without Python.  ``tests/unit/test_reset_reply.py`` feeds both
the same random streams cut at random points and requires the same verdict,
status and parameters after every chunk.

- Whole messages are read (5-byte header; a length under 4 or over
  ``MAX_MESSAGE``: FAILED at once, the stream cannot be trusted).
- ErrorResponse: the batch failed; reading goes on to the last ReadyForQuery.
- CopyInResponse, CopyOutResponse, CopyBothResponse: FAILED at once (the
  pooler's queries never start COPY; whoever owns the connection closes it).
- ParameterStatus: the parameter is recorded in ``params`` (malformed ones are
  ignored).
- ReadyForQuery: its status is recorded (idle when the body is empty) and one
  fewer is owed.  At the last one owed: CLEAN when no query failed, the status
  is idle and nothing followed it in what was received; else FAILED.
- Anything else (CommandComplete, NoticeResponse, ...) is skipped.

After a verdict the bytes fed are ignored and the verdict is repeated.  FAILED
always means "not reusable": the pool discards the connection.  No I/O here.
"""

from __future__ import annotations

from typing import Optional

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.errors import ProtocolViolation

#: ``feed``'s answers, the same numbers as _reset.c's.
MORE = 0
CLEAN = 1
FAILED = 2

#: The longest message the answer may hold (a length field above it is garbage).
MAX_MESSAGE = 65536

_COPY_START = (ord("G"), ord("H"), ord("W"))
_LENGTH = m.UINT32.unpack_from


class ResetReply:
    """Reads the answer to ``owed`` simple queries (``owed`` ReadyForQuery messages)."""

    __slots__ = ("_buffer", "error", "ok", "owed", "params", "status", "verdict")

    def __init__(self, owed: int, params: dict[str, str], status: int = m.IDLE) -> None:
        if owed < 1:
            raise ValueError("at least one ReadyForQuery must be owed")
        self.owed = owed
        #: The connection's parameters, updated in place.
        self.params = params
        self.status = status
        self.ok = True
        #: The first ErrorResponse's body, for the log.
        self.error: Optional[bytes] = None
        self.verdict = MORE
        self._buffer = b""

    def feed(self, data: bytes) -> int:
        """MORE while ReadyForQuery messages are owed, then CLEAN or FAILED."""
        if self.verdict != MORE:
            return self.verdict
        buffer = self._buffer + data if self._buffer else data
        n = len(buffer)
        pos = 0
        while n - pos >= 5:
            length = _LENGTH(buffer, pos + 1)[0]
            if length < 4 or length > MAX_MESSAGE:
                return self._finish(FAILED)
            end = pos + 1 + length
            if end > n:
                break
            if not self._message(buffer[pos], buffer[pos + 5 : end]):
                return self._finish(FAILED)
            pos = end
            if self.owed == 0:
                clean = self.ok and self.status == m.IDLE and pos == n
                return self._finish(CLEAN if clean else FAILED)
        self._buffer = buffer[pos:]
        return MORE

    def _message(self, kind: int, body: bytes) -> bool:
        """One whole message; False when it ends the answer at once (COPY)."""
        if kind == m.ERROR_RESPONSE:
            self.ok = False
            if self.error is None:
                self.error = body
        elif kind in _COPY_START:
            return False
        elif kind == m.PARAMETER_STATUS:
            try:
                name, value = m.parse_parameter_status(body)
            except ProtocolViolation:
                return True
            self.params[name] = value
        elif kind == m.READY_FOR_QUERY:
            self.status = body[0] if body else m.IDLE
            self.owed -= 1
        return True

    def _finish(self, verdict: int) -> int:
        self.verdict = verdict
        self._buffer = b""
        return verdict


__all__ = ["CLEAN", "FAILED", "MAX_MESSAGE", "MORE", "ResetReply"]
