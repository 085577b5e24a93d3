"""Which session tracker sessions use: the C one where it is built, else Python's.

``protocol/relay.py`` holds the rules in Python and ``_tracker.c`` holds the
same rules in C (``tests/unit/test_speedups.py`` feeds both the same streams);
the choice between them is the engine's, so the protocol room never imports it.
"""

from __future__ import annotations

from pgpool_tw.engine.speedups import speedups
from pgpool_tw.protocol.relay import SessionTracker

#: The C tracker when the extension is built and not turned off, else the Python one.
Tracker: type[SessionTracker] = speedups.SessionTracker if speedups is not None else SessionTracker

__all__ = ["Tracker"]
