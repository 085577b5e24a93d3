"""systemd's notify protocol: READY, RELOADING, STOPPING datagrams to $NOTIFY_SOCKET.

A few lines instead of a dependency.  Outside systemd (no NOTIFY_SOCKET) every
call is a no-op, so the service calls it unconditionally.  Must never raise:
a supervisor that went away is no reason to stop serving clients.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Optional


def notify(*states: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``) as one datagram; True when sent."""
    path = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall("\n".join(states).encode())
    except OSError:
        return False
    return True


def reloading(environ: Optional[Mapping[str, str]] = None) -> bool:
    """RELOADING=1 with the MONOTONIC_USEC systemd's notify-reload type asks for."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", environ=environ)
