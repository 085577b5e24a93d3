"""The health check settings: pgpool-II's ``health_check_*`` and ``connect_timeout``, global
and per node.

pgpool-II lets each of these eight names carry a node number (``health_check_period1``);
a numbered value wins for its node over the unnumbered one, which acts as the default for
every node, whatever the order of the lines.  This module owns how those names read and
how a node's settings are put together; what a health check does with them belongs to the
code that runs it.  Times are kept in seconds whatever unit the file used (pgpool-II counts
``connect_timeout`` in milliseconds and the others in seconds), so no caller converts.
Pure: no Twisted, no logging.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from pgpool_tw.config.values import MILLISECONDS, TIME, Kind, integer

__all__ = [
    "HEALTH_CHECK_KEYS",
    "HealthCheckSettings",
    "build_health_checks",
    "health_check_key",
]


@dataclass(frozen=True)
class HealthCheckSettings:
    """How one node (or, unnumbered, every node) is checked; the defaults are pgpool-II's."""

    #: health_check_period: seconds between checks; 0 is no health check.
    period: float = 0.0
    #: health_check_timeout: seconds a whole check may take; 0 is no limit.
    timeout: float = 20.0
    #: health_check_user.
    user: str = "nobody"
    #: health_check_password: '' takes the password from pool_passwd, then tries none (as
    #: sr_check_password does).
    password: str = field(default="", repr=False)
    #: health_check_database: '' tries postgres, then template1.
    database: str = ""
    #: health_check_max_retries: failed checks retried before the node is taken as down.
    max_retries: int = 0
    #: health_check_retry_delay: seconds between retries.
    retry_delay: float = 1.0
    #: connect_timeout: seconds to wait for a connection to the server, for health checks
    #: and ordinary connections alike (the file counts milliseconds); 0 is no limit.
    connect_timeout: float = 10.0


#: pgpool-II name without node number -> (HealthCheckSettings field, how to read it).
HEALTH_CHECK_KEYS: dict[str, tuple[str, Kind]] = {
    "health_check_period": ("period", TIME),
    "health_check_timeout": ("timeout", TIME),
    "health_check_user": ("user", Kind(str, "expected a user name")),
    "health_check_password": ("password", Kind(str, "expected a password, or ''")),
    "health_check_database": ("database", Kind(str, "expected a database name, or ''")),
    "health_check_max_retries": ("max_retries", integer(0)),
    "health_check_retry_delay": ("retry_delay", TIME),
    "connect_timeout": ("connect_timeout", MILLISECONDS),
}


def health_check_key(name: str) -> Optional[tuple[str, Optional[int]]]:
    """('health_check_period', 1) for 'health_check_period1', ('connect_timeout', None) for
    'connect_timeout'; None when ``name`` is not a health check setting.

    A node number has no leading zero, as for backend_*N, so health_check_period01 cannot
    silently alias health_check_period1.
    """
    stem = name.rstrip("0123456789")
    if stem not in HEALTH_CHECK_KEYS:
        return None
    digits = name[len(stem) :]
    if not digits:
        return stem, None
    if digits.startswith("0") and digits != "0":
        return None
    return stem, int(digits)


def build_health_checks(
    common: dict[str, Any],
    nodes: dict[int, dict[str, tuple[Any, int]]],
    backends: Collection[int],
    path: str,
) -> tuple[HealthCheckSettings, tuple[tuple[int, HealthCheckSettings], ...], list[tuple[int, str]]]:
    """The global settings, each overridden node's settings, and (line, warning)s.

    ``common`` maps the unnumbered names to their parsed values, ``nodes`` N -> name ->
    (parsed value, line).  A node's values are laid over the global ones only once the whole
    file is read, so line order does not matter (pgpool-II's rule).  Numbered values for a
    node that has no backend_hostnameN are ignored with a warning each, as backend_portN is:
    they are likely a typo'd N.
    """
    default = HealthCheckSettings(
        **{HEALTH_CHECK_KEYS[name][0]: value for name, value in common.items()}
    )
    merged: list[tuple[int, HealthCheckSettings]] = []
    warnings: list[tuple[int, str]] = []
    for index in sorted(nodes):
        given = nodes[index]
        if index in backends:
            values = {HEALTH_CHECK_KEYS[name][0]: value for name, (value, _) in given.items()}
            merged.append((index, replace(default, **values)))
            continue
        for name, (_, number) in given.items():
            warnings.append(
                (
                    number,
                    f"{path}:{number}: {name}{index} ignored: backend_hostname{index} is not set",
                )
            )
    return default, tuple(merged), warnings
