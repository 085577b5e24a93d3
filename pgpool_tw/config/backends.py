"""The ``backend_*N`` settings: one :class:`BackendNode` per PostgreSQL server.

pgpool-II numbers its servers ("DB node ID") from 0 to 127 and gives each six settings:
``backend_hostnameN``, ``backend_portN``, ``backend_weightN``, ``backend_flagN``,
``backend_data_directoryN`` and ``backend_application_nameN``.  This module reads them into
frozen nodes; what the nodes are for (role, status, which one takes writes) belongs to
:mod:`pgpool_tw.cluster`.  Pure: no Twisted, no logging.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from pgpool_tw.config.values import Kind, integer, parse_real

__all__ = ["MAX_BACKENDS", "BACKEND_KEYS", "BackendNode", "backend_key", "build_backends"]

MAX_BACKENDS = 128  # pgpool-II's limit: N is 0..127
ALLOW_TO_FAILOVER = "ALLOW_TO_FAILOVER"
DISALLOW_TO_FAILOVER = "DISALLOW_TO_FAILOVER"
ALWAYS_PRIMARY = "ALWAYS_PRIMARY"


@dataclass(frozen=True)
class BackendNode:
    """One PostgreSQL server, from the ``backend_*N`` settings.

    ``index`` is kept, not just the order, because pgpool-II's tools and logs name nodes by N.
    ``weight`` is the node's share of load-balanced reads, and ``application_name`` names it
    in the primary's pg_stat_replication (both apply on reload).  The failover flags and
    ``data_directory`` are kept for failover and online recovery, not acted on yet.
    """

    index: int
    hostname: str
    port: int = 5432
    weight: float = 1.0
    #: backend_flagN: ALLOW_TO_FAILOVER (the default) or DISALLOW_TO_FAILOVER ...
    allow_to_failover: bool = True
    #: ... optionally with |ALWAYS_PRIMARY.
    always_primary: bool = False
    data_directory: str = ""
    application_name: str = ""

    @property
    def is_unix(self) -> bool:
        """libpq's rule: a host starting with '/' is a socket directory, not a host name."""
        return self.hostname.startswith("/")

    @property
    def address(self) -> str:
        """Where we connect, written so it can be pasted into psql, ss or a bug report."""
        if self.is_unix:
            return f"{self.hostname.rstrip('/')}/.s.PGSQL.{self.port}"
        if ":" in self.hostname:
            # An IPv6 address: brackets keep the port from reading as another group.
            return f"[{self.hostname}]:{self.port}"
        return f"{self.hostname}:{self.port}"

    @property
    def flag(self) -> str:
        """backend_flagN as pgpool-II shows it (SHOW POOL_STATUS, pcp_pool_status)."""
        words = [ALLOW_TO_FAILOVER if self.allow_to_failover else DISALLOW_TO_FAILOVER]
        if self.always_primary:
            words.append(ALWAYS_PRIMARY)
        return "|".join(words)


def _parse_flag(text: str) -> dict[str, bool]:
    """pgpool-II's rules: words joined by '|', spaces around them ignored, case-sensitive;
    ALLOW_TO_FAILOVER and DISALLOW_TO_FAILOVER exclude each other; '' is the default."""
    words = {word.strip() for word in text.split("|") if word.strip()}
    if not words <= {ALLOW_TO_FAILOVER, DISALLOW_TO_FAILOVER, ALWAYS_PRIMARY}:
        raise ValueError(text)
    if {ALLOW_TO_FAILOVER, DISALLOW_TO_FAILOVER} <= words:
        raise ValueError(text)
    return {
        "allow_to_failover": DISALLOW_TO_FAILOVER not in words,
        "always_primary": ALWAYS_PRIMARY in words,
    }


_FLAG = Kind(
    _parse_flag,
    "expected ALLOW_TO_FAILOVER or DISALLOW_TO_FAILOVER, optionally with |ALWAYS_PRIMARY",
)

#: backend_<key>N: the key -> how to read it.  A reader returns the value of the field of the
#: same name, or a dict of fields (backend_flagN sets two).
BACKEND_KEYS: dict[str, Kind] = {
    "hostname": Kind(str, "expected a host name, an IP address or a socket directory"),
    "port": integer(1, 65535),
    "weight": Kind(parse_real, "expected a number >= 0"),
    "flag": _FLAG,
    "data_directory": Kind(str, "expected a directory"),
    "application_name": Kind(str, "expected a name"),
}
# No leading zeros, so backend_hostname01 cannot silently alias backend_hostname1.
_BACKEND_NAME = re.compile(r"backend_([a-z_]+?)(0|[1-9][0-9]*)\Z")


def backend_key(name: str) -> Optional[tuple[str, int]]:
    """('port', 1) for 'backend_port1'; None when ``name`` is not a backend_*N setting."""
    match = _BACKEND_NAME.match(name)
    if match is None or match.group(1) not in BACKEND_KEYS:
        return None
    return match.group(1), int(match.group(2))


def build_backends(
    nodes: dict[int, dict[str, tuple[Any, int]]], path: str
) -> tuple[tuple[BackendNode, ...], list[tuple[int, str]]]:
    """Nodes sorted by index from N -> key -> (parsed value, line), and (line, warning)s.

    A node exists only when its backend_hostnameN is set and not empty, as in pgpool-II; its
    other settings are then ignored with a warning each, since they are likely a typo'd N.
    """
    backends: list[BackendNode] = []
    warnings: list[tuple[int, str]] = []
    for index in sorted(nodes):
        given = nodes[index]
        if given.get("hostname", ("", 0))[0]:
            fields: dict[str, Any] = {}
            for key, (value, _) in given.items():
                if isinstance(value, dict):
                    fields.update(value)
                else:
                    fields[key] = value
            backends.append(BackendNode(index, **fields))
            continue
        for key, (_, number) in given.items():
            if key != "hostname":
                warnings.append(
                    (
                        number,
                        f"{path}:{number}: backend_{key}{index} ignored: "
                        f"backend_hostname{index} is not set",
                    )
                )
    return tuple(backends), warnings
