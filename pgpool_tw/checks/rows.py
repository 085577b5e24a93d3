"""Rows of a simple query the pooler runs for itself (backend.py's ``fetch``).

A ``ResetReply`` (the one rule for reading the answer to the pooler's own queries) that also
keeps each DataRow's values as text, None for NULL.  No I/O.
"""

from __future__ import annotations

from typing import Optional

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.reset_reply import FAILED, MORE, ResetReply

__all__ = ["DATA_ROW", "Row", "RowsReply", "parse_data_row"]

DATA_ROW = ord("D")

Row = tuple[Optional[str], ...]


def parse_data_row(body: bytes) -> Row:
    """A DataRow body as text values (None for NULL); ProtocolViolation when malformed."""
    if len(body) < 2:
        raise ProtocolViolation("08P01", "DataRow too short")
    count = int.from_bytes(body[:2], "big", signed=True)
    pos = 2
    values: list[Optional[str]] = []
    for _ in range(count):
        if pos + 4 > len(body):
            raise ProtocolViolation("08P01", "DataRow ends inside a column length")
        length = m.INT32.unpack_from(body, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
            continue
        if pos + length > len(body):
            raise ProtocolViolation("08P01", "DataRow ends inside a column")
        values.append(m.decode(body[pos : pos + length]))
        pos += length
    return tuple(values)


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
