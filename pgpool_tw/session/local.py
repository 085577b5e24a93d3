"""PGPOOL SHOW, PGPOOL SET and PGPOOL RESET: one session's view of the settings.

pgpool-II lets a session change some settings for itself (``PGPOOL SET
client_idle_limit = 350``).  pgpool-tw takes PGPOOL SET only for settings a session
applies on its own (``SESSION_SETTINGS``); any other setting it knows is refused
with SQLSTATE 55P02 and a line that says so, an unknown name with 42704, as
PostgreSQL's SET does.  PGPOOL SHOW reads the session's value over pgpool.conf's.
Bytes out, no I/O: ``Session.local_answer`` adds the ReadyForQuery.
"""

from __future__ import annotations

from typing import Any

from pgpool_tw.cluster.pgpool_sql import PGPOOL_RESET, PGPOOL_SET, LocalCommand
from pgpool_tw.config.settings import (
    Config,
    setting_items,
    setting_kind,
    setting_text,
    value_text,
)
from pgpool_tw.protocol import messages as m
from pgpool_tw.protocol.rows import command_complete, result_set

__all__ = ["SESSION_SETTINGS", "pgpool_command"]

#: Settings a session may change for itself, and applies: client_idle_limit is read by
#: the session's idle check (``FrontendProtocol.idle_tick``).
SESSION_SETTINGS = frozenset({"client_idle_limit"})


def pgpool_command(command: LocalCommand, config: Config, overrides: dict[str, Any]) -> bytes:
    """The answer to PGPOOL SHOW/SET/RESET, without ReadyForQuery; ``overrides`` (the
    session's own values) is changed in place by SET and RESET."""
    name = command.name
    if command.verb == PGPOOL_SET:
        return _set(name, command.value, overrides)
    if command.verb == PGPOOL_RESET:
        if name == "all":
            overrides.clear()
        elif setting_kind(name) is None:
            return _unknown(name)
        else:
            overrides.pop(name, None)
        return command_complete("RESET")
    if name == "all":
        rows: list[list[str | None]] = [
            [item, value_text(overrides[item]) if item in overrides else value, where]
            for item, value, where in setting_items(config)
        ]
        return result_set(("item", "value", "description"), rows)
    text = setting_text(config, name)
    if text is None:
        return _unknown(name)
    if name in overrides:
        text = value_text(overrides[name])
    return result_set((name,), [[text]])


def _set(name: str, value: str | None, overrides: dict[str, Any]) -> bytes:
    kind = setting_kind(name)
    if kind is None:
        return _unknown(name)
    if name not in SESSION_SETTINGS:
        return m.error_response(
            "55P02",
            f'parameter "{name}" cannot be changed for one session in pgpool-tw; '
            "set it in pgpool.conf",
            severity="ERROR",
        )
    if value is None:
        overrides.pop(name, None)
        return command_complete("SET")
    try:
        overrides[name] = kind.parse(value)
    except ValueError:
        return m.error_response(
            "22023",
            f'invalid value for parameter "{name}": "{value}"; {kind.allowed}',
            severity="ERROR",
        )
    return command_complete("SET")


def _unknown(name: str) -> bytes:
    return m.error_response(
        "42704", f'unrecognized configuration parameter "{name}"', severity="ERROR"
    )
