"""Rows of a simple query the pooler runs for itself (backend.py's ``fetch``).

A ``ResetReply`` (the one rule for reading the answer to the pooler's own queries) that also
keeps each DataRow's values as text, None for NULL.  No I/O.
"""

from __future__ import annotations

from typing import Optional

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.reset_reply import FAILED, MORE, ResetReply
from pgpool_tw.protocol.rows import parse_data_row

__all__ = ["DATA_ROW", "Row", "RowsReply", "parse_data_row"]

DATA_ROW = ord("D")

Row = tuple[Optional[str], ...]


class RowsReply(ResetReply):
    """The answer to one simple query: its rows, and ResetReply's verdict and status.

    ResetReply judges the stream; a MessageReader of our own frames the same bytes to keep
    the DataRows (the check's answers are small, and the reset's rule stays in one place).
    """

    __slots__ = ("_frames", "rows")

    def __init__(self, params: dict[str, str], status: int = m.IDLE) -> None:
        super().__init__(1, params, status)
        self.rows: list[Row] = []
        self._frames = m.MessageReader()

    def feed(self, data: bytes) -> int:
        if self.verdict != MORE:
            return self.verdict
        try:
            for kind, body in self._frames.feed(data):
                if kind == DATA_ROW:
                    self.rows.append(parse_data_row(body))
        except ProtocolViolation:
            self.verdict = FAILED
            return FAILED
        return super().feed(data)
