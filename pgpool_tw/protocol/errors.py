"""Errors the wire protocol layer raises when a peer breaks the protocol."""

from __future__ import annotations


class ProtocolViolation(Exception):
    """A peer sent something the protocol does not allow.

    Carries the SQLSTATE and message the client should get in its FATAL
    ErrorResponse, so the Twisted glue never has to invent wording.
    """

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
