#!/usr/bin/env python3
"""atheris target: a connection's opening bytes, cut anywhere.

Each input is a stream and its cut points (``harness.decode_input``), read by
``read_startup_packet`` as the handshake reads it (``wire_oracles.check_startup``:
the same packets, rest or FATAL whole and cut) and fed to a real ``Session`` in its
STARTUP state (``wire_oracles.check_handshake``: the same answers, actions and
state whole and cut; a refusal is one FATAL ErrorResponse with a SQLSTATE).  Any
other exception is a crash.  Run: see fuzz/README.md.
"""

from __future__ import annotations

import sys

from harness import decode_input, main

try:
    import atheris
except ImportError:  # --plain runs without it
    atheris = None

if atheris is not None and "--plain" not in sys.argv:
    with atheris.instrument_imports(
        include=["pgpool_tw.protocol", "pgpool_tw.session", "tests.unit.wire_oracles"]
    ):
        from tests.unit import (
            test_session_machine,  # noqa: F401  (instrumented once)
            wire_oracles,
        )
else:
    from tests.unit import wire_oracles


def one_input(data: bytes) -> None:
    stream, cuts = decode_input(data)
    wire_oracles.check_startup(stream, cuts)
    wire_oracles.check_handshake(stream, cuts)


if __name__ == "__main__":
    main(one_input, "startup")
