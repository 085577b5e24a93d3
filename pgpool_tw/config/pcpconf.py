"""pcp.conf: the users the PCP port lets in, each with the md5 of its password.

The format is pgpool-II's: one ``user:md5hash`` per line, where md5hash is the 32 hex
digits ``pg_md5 password`` (or ``echo -n password | md5sum``) prints; lines starting
with ``#`` and empty lines are skipped.  Where pgpool-II finds it: next to pgpool.conf
(``pcp_path``), unless twistd's ``-F`` names another file (pgpool-II's ``-F``).

A line that cannot be used is skipped with one warning naming the file, the line and the
problem, and the other users still work (an operator who mistyped one line keeps PCP);
a user listed twice keeps its first line, as pgpool-II reads the file top down.  The file
is read at start and at each reload: a file that is missing or cannot be read gives
``None``, and the PCP port does not listen (or stops letting anyone in) until it exists.
Pure: no Twisted, no logging.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Optional

__all__ = ["FILE_NAME", "MAX_NAME", "PcpUsers", "load_pcp_conf", "parse_pcp_conf", "pcp_path"]

FILE_NAME = "pcp.conf"
#: pgpool-II's MAX_USER_PASSWD_LEN: a longer user name is refused by its tools.
MAX_NAME = 127
_MD5 = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True)
class PcpUsers:
    """The users of one read of pcp.conf (a reload reads a new one)."""

    path: str
    #: user -> md5hex(password), lower case
    users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()


def pcp_path(config_path: Optional[str], given: str = "") -> Optional[str]:
    """``given`` (twistd's -F) when set, else pcp.conf in pgpool.conf's directory; None for
    a configuration built in code without either (embedding code opts in with a path)."""
    if given:
        return os.path.abspath(given)
    if not config_path:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), FILE_NAME)


def parse_pcp_conf(text: str, path: str) -> PcpUsers:
    users: dict[str, str] = {}
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        user, colon, secret = line.partition(":")
        if not colon:
            warnings.append(f"{where}: expected 'user:md5hash' (no ':' found); line skipped")
        elif not user:
            warnings.append(f"{where}: the user name before ':' is empty; line skipped")
        elif len(user.encode()) > MAX_NAME:
            warnings.append(
                f"{where}: user name longer than {MAX_NAME} bytes (pgpool-II's limit); line skipped"
            )
        elif not _MD5.fullmatch(secret):
            warnings.append(
                f"{where}: {user}: expected the md5 of the password (32 hex digits, as "
                "pg_md5 prints), not the password itself; line skipped"
            )
        elif user in users:
            warnings.append(f"{where}: {user} is listed again; its first line is used")
        else:
            users[user] = secret.lower()
    return PcpUsers(path, MappingProxyType(users), tuple(warnings))


def load_pcp_conf(path: str) -> Optional[PcpUsers]:
    """The users of the file at ``path``, or None when it does not exist or cannot be
    read (the caller says so once)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError):
        return None
    return parse_pcp_conf(text, path)
