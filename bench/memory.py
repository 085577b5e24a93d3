"""Resident memory of a pooler holding many idle client connections.

Owns: raising this process's RLIMIT_NOFILE (children started afterwards inherit it),
opening N idle TCP connections to a pooler (connected, no byte ever sent), waiting until
the pooler has accepted them all (its fd count in /proc), and reading its VmRSS before
and after.

Must never: send a byte on those connections, or keep them open after measuring.
"""

from __future__ import annotations

import resource
import socket
import time
from dataclasses import dataclass
from typing import Optional

from procs import fd_count, rss_kib

ACCEPT_TIMEOUT = 120.0  # for the pooler to accept every connection
SETTLE = 1.0  # seconds to let the pooler finish per-connection set-up before reading RSS
BATCH = 100  # connections opened before waiting for the pooler to accept them


@dataclass
class MemoryResult:
    target: str
    clients: int
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    accepted: int = 0  # fds the pooler gained
    closed_by_pooler: int = 0  # of our connections, how many the pooler had closed
    error: str = ""

    @property
    def kib_per_client(self) -> Optional[float]:
        if self.error or not self.clients:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.clients


def raise_nofile(needed: int) -> tuple[int, str]:
    """Raise RLIMIT_NOFILE to ``needed`` (the hard limit too, when we may); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft, ""
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed, ""
        except (ValueError, OSError) as e:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard, f"could not raise the open-files limit to {needed} ({e}); it is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed, ""


def measure_idle_clients(target: str, pid: int, port: int, clients: int) -> MemoryResult:
    """Open ``clients`` idle connections to 127.0.0.1:port; RSS of ``pid`` before/after."""
    result = MemoryResult(target, clients)
    socks: list[socket.socket] = []
    try:
        base_fds = _settled_fd_count(pid)
        result.rss_before_kib = rss_kib(pid)
        deadline = time.monotonic() + ACCEPT_TIMEOUT
        while len(socks) < clients:
            for _ in range(min(BATCH, clients - len(socks))):
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.settimeout(None)  # blocking again, so MSG_DONTWAIT reads never wait
                socks.append(sock)
            # Wait for the pooler to catch up, so its listen queue never overflows.
            while fd_count(pid) - base_fds < len(socks):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the pooler accepted only {fd_count(pid) - base_fds} of "
                        f"{len(socks)} connections within {ACCEPT_TIMEOUT:g}s"
                    )
                time.sleep(0.005)
        time.sleep(SETTLE)
        result.accepted = fd_count(pid) - base_fds
        result.rss_after_kib = rss_kib(pid)
        result.closed_by_pooler = sum(1 for sock in socks if _closed(sock))
        if result.closed_by_pooler:
            result.error = f"the pooler closed {result.closed_by_pooler} idle connections"
    except (OSError, RuntimeError) as e:
        result.error = f"{type(e).__name__}: {e} (after opening {len(socks)} connections)"
    finally:
        for sock in socks:
            sock.close()
    return result


def _settled_fd_count(pid: int, quiet: float = 0.3, limit: float = 10.0) -> int:
    """The pooler's open descriptors once the count stopped moving for ``quiet`` seconds.

    The readiness check's client may still be closing when the count is first read;
    a base one too high would leave the last client uncounted and the wait hanging.
    """
    count = fd_count(pid)
    stable_since = time.monotonic()
    deadline = stable_since + limit
    while time.monotonic() - stable_since < quiet and time.monotonic() < deadline:
        time.sleep(0.02)
        now = fd_count(pid)
        if now != count:
            count, stable_since = now, time.monotonic()
    return count


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (a read would return EOF or fail), without waiting."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def nofile_needed(clients: int, max_client_conn: int) -> int:
    """Descriptors needed: ours (one per idle client) or pgbouncer's max_client_conn."""
    return max(clients, max_client_conn) + 2048
