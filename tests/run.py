"""Run trial and end with one plain line that any CI can read: ``N passed, N failed``.

Usage: ``python tests/run.py [trial options and test names]`` (default: ``tests``).
trial's output is streamed as it comes; its closing ``PASSED (...)``/``FAILED (...)`` line
is parsed into counts. A run with no such line (trial crashed) counts as one failure.
The exit status is non-zero iff something failed or trial itself exited non-zero.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
from typing import NamedTuple, Optional

_SUMMARY = re.compile(r"^(PASSED|FAILED)(?: \((?P<counts>[^)]*)\))?\s*$")
_COUNT = re.compile(r"^\s*(\w+)=(\d+)\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Summary(NamedTuple):
    passed: int
    failed: int
    skipped: int
    ok: bool  # trial said PASSED

    def line(self) -> str:
        text = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            text += f", {self.skipped} skipped"
        return text


def parse_trial_summary(output: str) -> Optional[Summary]:
    """Counts from the last ``PASSED``/``FAILED`` summary line of trial's output, or None."""
    for raw in reversed(output.splitlines()):
        match = _SUMMARY.match(_ANSI.sub("", raw))
        if match is None:
            continue
        counts: dict[str, int] = collections.Counter()
        for item in (match.group("counts") or "").split(","):
            count = _COUNT.match(item)
            if count is None:
                if item.strip():
                    break  # not a trial summary after all, e.g. a test printing "PASSED (x)"
                continue
            counts[count.group(1)] += int(count.group(2))
        else:
            return Summary(
                passed=counts["successes"] + counts["expectedFailures"],
                failed=counts["failures"] + counts["errors"] + counts["unexpectedSuccesses"],
                skipped=counts["skips"],
                ok=match.group(1) == "PASSED",
            )
    return None


def main(argv: list[str]) -> int:
    args = argv or ["tests"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "twisted.trial", *args]
    tail: collections.deque[str] = collections.deque(maxlen=50)
    out = sys.stdout.buffer
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    # A terminal ^C reaches trial too: let it report and exit while we keep reading.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for chunk in iter(proc.stdout.readline, b""):
        out.write(chunk)
        out.flush()
        tail.append(chunk.decode("utf-8", errors="replace"))
    returncode = proc.wait()
    summary = parse_trial_summary("".join(tail))
    if summary is None:
        summary = Summary(passed=0, failed=1, skipped=0, ok=False)
    sys.stdout.write("\n" + summary.line() + "\n")
    sys.stdout.flush()
    if summary.failed or not summary.ok or returncode != 0:
        return returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
