"""The optional C extension ``pgpool_tw.engine._speedups``, or None.

One switch for every part that uses it: the extension is built only for CPython
on Linux (PyPy runs the pure-Python relay, which it compiles well itself), and
``PGPOOL_TW_PURE_PYTHON=1`` in the environment turns it off, to compare the two
or to rule it out when debugging.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Optional


def _load() -> Optional[ModuleType]:
    if os.environ.get("PGPOOL_TW_PURE_PYTHON"):
        return None
    try:
        from pgpool_tw.engine import _speedups
    except ImportError:
        return None
    return _speedups


#: The extension module when it is built and not turned off.
speedups = _load()

__all__ = ["speedups"]
