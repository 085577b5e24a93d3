"""What the fuzz targets share: the input layout, the checks' import, the driver.

An input is one byte ``k``, then ``k % 9`` cut points as 2-byte big-endian offsets,
then the byte stream: a fuzzer's mutations move the cuts and the stream alike, and a
crash file replays exactly.  The checks are the unit tests' oracles
(``tests/unit/wire_oracles.py``), so a crash here is a failing property there.

Under atheris the run is coverage-guided over the Python parsers (instrumented at
import) and, when ``PGPOOL_TW_FUZZ_SPEEDUPS`` names a C extension built with
``-fsanitize=fuzzer-no-link`` (see fuzz/README.md), over the C walker too.  Without
atheris, ``--plain N`` feeds N random mutations of the corpus through the same
target, uninstrumented.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def load_instrumented_speedups() -> None:
    """Put the instrumented build of ``_speedups`` named by PGPOOL_TW_FUZZ_SPEEDUPS in
    place of the ordinary one, before anything imports it."""
    path = os.environ.get("PGPOOL_TW_FUZZ_SPEEDUPS")
    if not path:
        return
    name = "pgpool_tw.engine._speedups"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    print(f"INFO: C walker from {path}", file=sys.stderr)


def decode_input(data: bytes) -> tuple[bytes, list[int]]:
    """(stream, cuts) of one fuzz input (the layout in the module docstring)."""
    if not data:
        return b"", []
    count = data[0] % 9
    head = 1 + 2 * count
    cuts = [int.from_bytes(data[1 + 2 * i : 3 + 2 * i], "big") for i in range(count)]
    return data[head:], cuts


def encode_input(stream: bytes, cuts: list[int]) -> bytes:
    """The fuzz input for ``stream`` cut at ``cuts`` (at most 8): for seeds."""
    return bytes([len(cuts)]) + b"".join(c.to_bytes(2, "big") for c in cuts) + stream


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        op = rng.randrange(5)
        if op == 0 and at < len(out):
            out[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del out[at : at + rng.randint(1, 8)]
        elif op == 3:
            del out[at:]
        elif at + 4 <= len(out):  # an absurd or tiny length where a length may be
            out[at : at + 4] = rng.choice([0, 3, 4, 0x7FFFFFFF, 0xFFFFFFFF]).to_bytes(4, "big")
    return bytes(out)


def plain(target: Callable[[bytes], None], corpus: Path, runs: int) -> None:
    """Feed ``runs`` random mutations of the corpus files through ``target``."""
    seeds = [p.read_bytes() for p in sorted(corpus.glob("*")) if p.is_file()] or [b""]
    rng = random.Random()
    started = time.monotonic()
    for done in range(1, runs + 1):
        data = _mutate(rng.choice(seeds), rng)
        try:
            target(data)
        except BaseException:
            crash = Path(f"crash-plain-{done}")
            crash.write_bytes(data)
            print(f"crash: input written to {crash}", file=sys.stderr)
            raise
        if done % 10000 == 0:
            print(f"#{done} plain, {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(f"done: {runs} runs clean", file=sys.stderr)


def main(target: Callable[[bytes], None], corpus_name: str) -> None:
    """Run ``target`` under atheris (libFuzzer's options pass through), or ``--plain N``."""
    if len(sys.argv) >= 3 and sys.argv[1] == "--plain":
        plain(target, ROOT / "fuzz" / "corpus" / corpus_name, int(sys.argv[2]))
        return
    import atheris

    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
