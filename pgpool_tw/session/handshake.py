"""A client's first bytes: SSLRequest, GSSENCRequest, CancelRequest, the startup packet.

PostgreSQL's rules for the opening of a connection, applied for one ``Session``
in its ``STARTUP`` state: SSLRequest is answered once (S and TLS when the
pooler has a certificate, else N) and GSSENCRequest once (N: GSSAPI encryption
is not offered); a second request of either is a protocol violation; a
CancelRequest is forwarded (``cancel.forward``) and ends the connection once the
server has processed it (nothing more is read meanwhile); the
startup packet hands the session its parameters and whatever followed it.

Must never read bytes that arrived in plaintext after an SSLRequest as if they
were encrypted (PostgreSQL's CVE-2021-23214): they are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pgpool_tw.protocol.errors import ProtocolViolation
from pgpool_tw.protocol.messages import UINT32
from pgpool_tw.protocol.startup import (
    GSSENC_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    read_startup_packet,
    ssl_request,
)
from pgpool_tw.session import cancel
from pgpool_tw.session.preauth import startup_stage
from pgpool_tw.session.states import CLOSED

if TYPE_CHECKING:
    from pgpool_tw.session.machine import Session

#: The answer to an encryption request the pooler does not take up.
REFUSED = b"N"
#: Bits of the requests already answered when this handshake takes a connection over
#: (the warm lane answers from ``lane_answers`` and reports them on a miss).
TLS_ANSWERED = 1
GSS_ANSWERED = 2

_SSL_REQUEST = ssl_request()
_GSSENC_REQUEST = UINT32.pack(8) + UINT32.pack(GSSENC_REQUEST_CODE)


def lane_answers(frontend_tls: bool) -> dict[bytes, tuple[bytes, int]]:
    """The answers the C lane may give by itself: this module's rules as a table.

    Request packet -> (answer, bit).  GSSENCRequest is always refused; SSLRequest
    only when the pooler has no client TLS (else TLS starts here, in Python).  The
    lane answers each at most once; a repeat, or anything else, comes here.
    """
    table = {_GSSENC_REQUEST: (REFUSED, GSS_ANSWERED)}
    if not frontend_tls:
        table[_SSL_REQUEST] = (REFUSED, TLS_ANSWERED)
    return table


class Handshake:
    """The startup phase of one session: buffers until a whole packet is in."""

    __slots__ = ("_buffer", "cancelling", "gss_answered", "session", "tls_answered")

    def __init__(self, session: Session) -> None:
        self.session = session
        self._buffer = b""
        #: Each request is answered once, possibly already by the C lane.
        self.tls_answered = False
        self.gss_answered = False
        #: A CancelRequest came: its delivery is under way (``cancel.forward``).
        self.cancelling = False

    def stage(self) -> str:
        """Where the client stopped, for authentication_timeout's log line."""
        if self.session.ssl and not self._buffer:
            return "the TLS handshake or the startup packet"
        return startup_stage(len(self._buffer))

    def feed(self, data: bytes) -> None:
        if self.cancelling:
            return  # PostgreSQL reads nothing after a CancelRequest either
        session = self.session
        buffer = self._buffer + data
        while True:
            try:
                packet, used = read_startup_packet(buffer)
            except ProtocolViolation as e:
                session.fatal(e.sqlstate, e.message)
                return
            if packet is None:
                self._buffer = buffer
                return
            whole, buffer = buffer, buffer[used:]
            if isinstance(packet, SSLRequest) and not self.tls_answered:
                self.tls_answered = True
                if self._ssl_request(buffer):
                    return
            elif isinstance(packet, GSSENCRequest) and not self.gss_answered:
                self.gss_answered = True
                session.io.send(REFUSED)
            elif isinstance(packet, CancelRequest):
                # Nothing else is read; the connection closes once the cancel is over.
                self._buffer = b""
                self.cancelling = True
                cancel.forward(session.context, packet, session.peer, self._cancel_answered)
                return
            elif isinstance(packet, StartupMessage):
                self._buffer = b""
                # The packet's bytes only for a warm lane to learn: a copy otherwise unused.
                raw = whole[:used] if session.context.warm is not None else b""
                session.started(packet, raw, buffer)
                return
            else:
                session.fatal("08P01", "duplicate SSL or GSS encryption request")
                return

    def _cancel_answered(self) -> None:
        """The cancel was delivered (the server closed its connection) or dropped: the
        client's connection closes now, as PostgreSQL's does, for libpq waits for that
        before its cancel returns."""
        session = self.session
        if session.state != CLOSED:
            session.io.finish()

    def _ssl_request(self, rest: bytes) -> bool:
        """Answer an SSLRequest; True when reading must stop (TLS starts, or an error)."""
        session = self.session
        context = session.context.tls.frontend
        if context is None:
            session.io.send(REFUSED)
            return False
        if rest:
            # Bytes sent before the handshake must never be taken for encrypted ones.
            session.fatal("08P01", "received unencrypted data after SSL request")
            return True
        session.io.send(b"S")
        session.io.start_tls(context)
        session.ssl = True
        self._buffer = b""
        return True
