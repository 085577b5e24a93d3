#!/usr/bin/env python3
"""Write the seed corpora (fuzz/corpus/walker, fuzz/corpus/startup): valid streams,
each once whole and once cut, for the fuzzer to mutate from.  Rerun after changing
the seeds; the files are committed."""

from __future__ import annotations

import hashlib

from harness import ROOT, encode_input

from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.startup import cancel_request, ssl_request
from tests.unit.test_session_machine import GSSENC_REQUEST, SSL_REQUEST, startup_packet


def walker_seeds() -> list[bytes]:
    client = (
        m.query("select 1")
        + m.message(b"P", b"\0select $1\0\0\0")
        + m.message(b"B", b"\0\0\0\0\0\0\0\0")
        + m.message(b"E", b"\0\0\0\0\0")
        + m.message(b"S")
        + m.message(b"d", b"1\t2\n")
        + m.message(b"c")
        + m.terminate()
    )
    server = (
        m.message(b"T", b"\0\x01a\0" + b"\0" * 18)
        + m.message(b"D", b"\0\x01\0\0\0\x011")
        + m.message(b"C", b"SELECT 1\0")
        + m.parameter_status("TimeZone", "UTC")
        + m.ready_for_query(m.IN_TRANSACTION)
        + m.error_response("42601", "syntax error", severity="ERROR")
        + m.ready_for_query(m.IDLE)
    )
    big = b"D" + (1 << 21).to_bytes(4, "big") + b"x" * 64  # past MessageReader's limit
    return [client, server, big, m.message(b"Z", b""), m.message(b"S", b"a\0b\0c\0")]


def startup_seeds() -> list[bytes]:
    return [
        startup_packet(),
        SSL_REQUEST + startup_packet("bob", "db", "app") + m.query("select 1"),
        GSSENC_REQUEST + SSL_REQUEST + startup_packet(),
        ssl_request() + cancel_request(1234, 5678),
        startup_packet()[:4] + ((3 << 16) | 2).to_bytes(4, "big") + b"user\0u\0_pq_.x\0y\0\0",
        SSL_REQUEST * 2,
    ]


def write(name: str, streams: list[bytes]) -> None:
    folder = ROOT / "fuzz" / "corpus" / name
    folder.mkdir(parents=True, exist_ok=True)
    for stream in streams:
        for cuts in ([], [1, 5, len(stream) // 2]):
            data = encode_input(stream, cuts)
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


if __name__ == "__main__":
    write("walker", walker_seeds())
    write("startup", startup_seeds())
