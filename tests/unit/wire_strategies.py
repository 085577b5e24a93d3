"""Hypothesis strategies for hostile protocol bytes: valid streams, then mutated.

A mutation is what a broken or hostile peer does to a valid stream: a flipped bit,
bytes inserted or deleted, the stream cut short, or a length field overwritten with
an absurd value (0, 3, 2^31 - 1, 2^32 - 1, just past a limit).  Used by
``test_protocol_properties.py`` and ``test_walker_agreement.py``; the message
strategies of ``test_speedups.py`` are reused as the valid material.
"""

from __future__ import annotations

from hypothesis import strategies as st

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_LENGTH,
    SSL_REQUEST_CODE,
)
from tests.unit.test_speedups import ANY_MESSAGE, READY, STATUS, WATCHED

#: Length fields a hostile peer writes: too short, the edges, absurdly long.
ABSURD_LENGTHS = (
    0,
    1,
    3,
    4,
    5,
    7,
    8,
    16,
    MAX_STARTUP_LENGTH + 3,
    MAX_STARTUP_LENGTH + 4,
    m.MAX_FRAMED_LENGTH,
    m.MAX_FRAMED_LENGTH + 1,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
)

#: Cut points beyond any stream here are ignored by ``split_at``.
CUTS = st.lists(st.integers(min_value=0, max_value=600), max_size=12)


@st.composite
def mutated(draw: st.DrawFn, streams: st.SearchStrategy[bytes], most: int = 4) -> bytes:
    """A stream of ``streams`` with up to ``most`` mutations."""
    data = bytearray(draw(streams))
    for _ in range(draw(st.integers(min_value=0, max_value=most))):
        at = draw(st.integers(min_value=0, max_value=len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "length"]))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(min_value=1, max_value=8))]
        elif op == "truncate":
            del data[at:]
        elif op == "length":
            data[at : at + 4] = draw(st.sampled_from(ABSURD_LENGTHS)).to_bytes(4, "big")
    return bytes(data)


# -- typed messages -------------------------------------------------------------------

#: Well-framed message streams, client and server kinds mixed.
MESSAGES = st.lists(st.one_of(ANY_MESSAGE, STATUS, READY, WATCHED), max_size=20).map(b"".join)
#: Those, mutated.
HOSTILE_MESSAGES = mutated(MESSAGES)


# -- the first packet -----------------------------------------------------------------

_NAME = st.sampled_from(
    ["user", "database", "application_name", "options", "_pq_.x", "client_encoding", ""]
)
_VALUE = st.text(max_size=12) | st.sampled_from(["alice", "app", "\udcff", "a\nb"])


def _packet(code: int, body: bytes) -> bytes:
    return (len(body) + 8).to_bytes(4, "big") + code.to_bytes(4, "big") + body


STARTUP = st.builds(
    lambda minor, pairs: _packet(
        (3 << 16) | minor,
        b"".join(m.cstring(k) + m.cstring(v) for k, v in pairs) + b"\0",
    ),
    st.sampled_from([0, 0, 1, 2, 0xFFFF]),
    st.lists(st.tuples(_NAME, _VALUE), max_size=5).map(lambda p: [("user", "alice"), *p]),
)
SSL = st.just(_packet(SSL_REQUEST_CODE, b""))
GSSENC = st.just(_packet(GSSENC_REQUEST_CODE, b""))
CANCEL = st.builds(
    lambda pid, key: _packet(CANCEL_REQUEST_CODE, pid.to_bytes(4, "big") + key.to_bytes(4, "big")),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
)
OTHER_CODE = st.builds(
    _packet,
    st.sampled_from([2 << 16, 4 << 16, 1234 << 16 | 5679, 0, 0xFFFFFFFF]),
    st.binary(max_size=16),
)
#: An opening as clients send it: encryption requests, then a startup packet or a
#: CancelRequest, then maybe pipelined messages.
OPENING = st.builds(
    lambda head, first, tail: b"".join(head) + first + tail,
    st.lists(st.one_of(SSL, GSSENC), max_size=3),
    st.one_of(STARTUP, STARTUP, CANCEL, OTHER_CODE),
    st.one_of(st.just(b""), MESSAGES),
)
#: Those, mutated.
HOSTILE_OPENING = mutated(OPENING)
