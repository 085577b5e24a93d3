"""What to tell a user about their pgpool.conf: unused pgpool-II settings, and reload changes.

A pgpool-II user's file names many settings pgpool-tw does not act on yet.  They are told
once, one line per feature ("online recovery: recovery_1st_stage_command not used yet"), and
only for settings the file sets to a value at which pgpool-II would behave
differently from pgpool-tw (see :mod:`.pgpool2_names`); a reload repeats a line only when
one of its settings changed.  A reload also says which settings changed and which of those
keep their running value until a restart.  Lines name settings, never their values, so no
password reaches a log.  Pure: no Twisted, no logging; the caller logs the lines.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, NamedTuple, Optional

from pgpool_tw.config.pgpool2_names import FEATURES, Feature, feature_of
from pgpool_tw.config.settings import RESTART_REQUIRED, Config, field_of
from pgpool_tw.config.values import BOOLEANS

__all__ = [
    "ReloadPlan",
    "new_warnings",
    "plan_reload",
    "restart_needed",
    "unused_lines",
    "unused_settings",
]

# pgpool-II's time and memory units, lower-cased: '1min' and '60' are the same value.
_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_UNITS.update({"b": 1.0, "kb": 1024.0, "mb": 1024.0**2, "gb": 1024.0**3, "tb": 1024.0**4})
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)\Z")


def _normal(text: str) -> str:
    """One spelling per value, so 'on' matches 'true' and '1min' matches '60'."""
    lowered = text.strip().lower()
    if lowered in BOOLEANS:
        return "on" if BOOLEANS[lowered] else "off"
    match = _QUANTITY.match(lowered)
    if match is not None and (not match.group(2) or match.group(2) in _UNITS):
        return repr(float(match.group(1)) * _UNITS.get(match.group(2), 1.0))
    return text.strip()


def _acts(value: Optional[str], neutral: Optional[str]) -> bool:
    """Whether pgpool-II would act on ``value`` where pgpool-tw does not."""
    return value is not None and (neutral is None or _normal(value) != _normal(neutral))


def unused_settings(config: Config) -> dict[str, list[str]]:
    """Feature title -> the names the file sets that pgpool-tw does not act on, file order."""
    given = dict(config.given)
    found: dict[str, list[str]] = {}
    for name, value in config.given:
        known = feature_of(name)
        if known is None or not isinstance(value, str):
            continue
        feature, neutral = known
        if _switched_off(feature, name, given) or not _acts(value, neutral):
            continue
        found.setdefault(feature.title, []).append(name)
    return found


def _switched_off(feature: Feature, name: str, given: dict[str, Any]) -> bool:
    """A feature's settings mean nothing to pgpool-II while its switch is neutral.

    No switch is numbered, so a numbered setting (wd_port1) follows the global switch
    (use_watchdog) as the others do.
    """
    if feature.switch is None:
        return False
    switch, default, neutral = feature.switch
    if name == switch:
        return False
    return not _acts(_text(given.get(switch, default)), neutral)


def _text(value: Any) -> str:
    """A switch pgpool-tw reads itself (load_balance_mode, sr_check_period) is given parsed."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # '0', which _normal reads as the '0' a file would hold
    return str(value)


def unused_lines(config: Config, running: Optional[Config] = None) -> list[str]:
    """One line per feature; with ``running``, only features whose settings changed."""
    where = config.path or "pgpool.conf"
    before = unused_settings(running) if running is not None else {}
    old = dict(running.given) if running is not None else {}
    new = dict(config.given)
    now = unused_settings(config)
    lines = []
    for feature in FEATURES:
        names = now.get(feature.title, [])
        if not names:
            continue
        if (
            running is not None
            and names == before.get(feature.title)
            and all(old.get(name) == new.get(name) for name in names)
        ):
            continue
        hint = f" ({feature.hint})" if feature.hint else ""
        lines.append(f"{where}: {feature.title}: {', '.join(names)} not used yet{hint}")
    return lines


def new_warnings(config: Config, running: Config) -> list[str]:
    """Warnings ``running`` did not have, told apart by their text without the line number,
    so that inserting a line above them does not repeat them all."""

    def key(warning: str) -> str:
        return re.sub(r"^.*?:[0-9]+: ", "", warning, count=1)

    seen = {key(w) for w in running.warnings}
    return [w for w in config.warnings if key(w) not in seen]


class ReloadPlan(NamedTuple):
    """What a reload does: the Config to apply and the names to tell the operator."""

    config: Config
    changed: list[str]  # applied
    restart: list[str]  # changed in the file, running value kept until a restart


def restart_needed(running: Config, new: Config) -> list[str]:
    """The Config fields ``new`` changes that only a restart applies, as pgpool-II rules.

    pgpool-II reads backend_clustering_mode and load_balance_mode at server start only, and
    its nodes' backend_hostnameN, backend_portN and backend_data_directoryN cannot change
    without a restart.  pgpool-II adds a node on reload; pgpool-tw builds its pools and
    cluster at start, so adding or removing a node needs a restart here.  backend_weightN,
    backend_flagN and backend_application_nameN apply on reload, to new sessions.
    """
    fields = [
        name
        for name in sorted(RESTART_REQUIRED - {"backends"})
        if getattr(new, name) != getattr(running, name)
    ]
    if _fixed(new) != _fixed(running):
        fields.append("backends")
    return sorted(fields)


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Apply ``new`` except the settings only a restart can change (:func:`restart_needed`),
    which keep ``running``'s."""
    old, now = dict(running.given), dict(new.given)
    names = sorted(n for n in old.keys() | now.keys() if old.get(n) != now.get(n))
    kept = {name: getattr(running, name) for name in restart_needed(running, new)}
    restart = [n for n in names if field_of(n) in kept]
    changed = [n for n in names if n not in restart]
    return ReloadPlan(replace(new, **kept) if kept else new, changed, restart)


def _fixed(config: Config) -> list[tuple[int, str, int, str]]:
    """What of the nodes only a restart changes: which exist, where, and their data."""
    return [(n.index, n.hostname, n.port, n.data_directory) for n in config.backends]
