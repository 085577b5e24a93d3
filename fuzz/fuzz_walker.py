#!/usr/bin/env python3
"""atheris target: the header walkers against the framer, on any bytes cut anywhere.

Each input is a stream and its cut points (``harness.decode_input``), fed as a
server stream and as a client stream to Python's ``SessionTracker`` and the C one
(``_tracker.c``): both must find the message boundaries and kinds that
``MessageReader``'s rule finds up to the first length it refuses, and
``MessageReader`` must frame it the same whole and cut, refusing only with 08P01
(``tests/unit/wire_oracles.check_walkers``).  Run: see fuzz/README.md.
"""

from __future__ import annotations

import sys

from harness import decode_input, load_instrumented_speedups, main

load_instrumented_speedups()

try:
    import atheris
except ImportError:  # --plain runs without it
    atheris = None

if atheris is not None and "--plain" not in sys.argv:
    with atheris.instrument_imports(include=["pgpool_tw.protocol", "tests.unit.wire_oracles"]):
        from tests.unit import wire_oracles
else:
    from tests.unit import wire_oracles

if wire_oracles.speedups is None:
    print("WARNING: the C extension is not built: only Python's walker runs", file=sys.stderr)


def one_input(data: bytes) -> None:
    stream, cuts = decode_input(data)
    wire_oracles.check_walkers(stream, cuts)


if __name__ == "__main__":
    main(one_input, "walker")
