#!/usr/bin/env bash
# Build pgpool_tw.engine._speedups with clang's coverage (-fsanitize=fuzzer-no-link) and
# AddressSanitizer into fuzz/build/, for fuzz_walker.py; prints the module's path.  The
# package's own build is left alone (the tests and the pooler keep it).  Needs clang
# (apt-get install clang); the ASan runtime comes from atheris (LD_PRELOAD, see fuzz/run).
set -euo pipefail
cd "$(dirname "$0")/.."
out=fuzz/build
CC="clang -fsanitize=address,fuzzer-no-link" LDSHARED="clang -shared" CFLAGS="-g -O1" \
    .venv/bin/python setup.py -q build_ext --build-lib "$out" --build-temp "$out/tmp" >&2
so="$(ls "$out"/pgpool_tw/engine/_speedups*.so 2>/dev/null || true)"
[ -n "$so" ] || { echo "the instrumented build failed (see above)" >&2; exit 1; }
echo "$so"
