"""Reading pgpool-II's ``pgpool.conf`` into a frozen, validated :class:`Config`.

This module owns three things: the file syntax (pgpool-II's, which is PostgreSQL's
``name = value`` format), the one table of supported settings with their ranges, and the
wording of configuration errors.  Everything else in pgpool-tw receives a finished ``Config``
and never looks at the text.

It must never import Twisted, open sockets, log, or read globals: parsing is a pure function
from text to either a ``Config`` or one :class:`ConfigError`, so a reload can build a
candidate configuration, diff it against the running one and refuse it with no side effects.
Unknown settings are not errors, because a real pgpool.conf holds hundreds we do not
implement; they are returned in ``Config.warnings`` for the caller to log.

Adding a setting takes one field on :class:`Config` (which holds the default) and one row in
``_SETTINGS`` (which holds the parser and the text that says what is allowed).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple, Optional

__all__ = [
    "RESTART_REQUIRED",
    "BackendNode",
    "Config",
    "ConfigError",
    "load_config",
    "parse_config",
]


class ConfigError(Exception):
    """A configuration that must not be used, told in one line an operator can act on.

    The shape is '<file>:<line>: <setting>: <what is wrong>; <what is allowed>', so an editor
    can jump to the line and the fix is in the message rather than in our source.
    """


@dataclass(frozen=True)
class BackendNode:
    """One PostgreSQL server, from the ``backend_*N`` settings.

    ``index`` is kept, not just the order, because pgpool-II's tools and logs name nodes by N.
    """

    index: int
    hostname: str
    port: int = 5432
    weight: float = 1.0

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


@dataclass(frozen=True)
class Config:
    """A whole, validated configuration; the defaults here are pgpool-II's defaults.

    Frozen so a reload replaces it rather than mutating what running connections read.
    """

    path: Optional[str] = None
    listen_addresses: tuple[str, ...] = ("localhost",)
    port: int = 9999
    socket_dirs: tuple[str, ...] = ("/tmp",)
    backends: tuple[BackendNode, ...] = ()
    num_init_children: int = 32
    max_pool: int = 4
    child_life_time: float = 300
    child_max_connections: int = 0
    connection_life_time: float = 0
    client_idle_limit: float = 0
    authentication_timeout: float = 60
    connection_cache: bool = True
    reset_query_list: tuple[str, ...] = ("ABORT", "DISCARD ALL")
    log_connections: bool = False
    smart_shutdown_timeout: float = 60
    enable_pool_hba: bool = False
    #: Relative paths are taken from pgpool.conf's directory (as pgpool-II does).
    pool_hba_file: str = "pool_hba.conf"
    pool_passwd: str = "pool_passwd"  # '' disables pool_passwd
    allow_clear_text_frontend_auth: bool = False
    ssl: bool = False
    ssl_key: str = ""
    ssl_cert: str = ""
    ssl_ca_cert: str = ""
    ssl_ciphers: str = "HIGH:MEDIUM:+3DES:!aNULL"
    ssl_min_protocol_version: str = "TLSv1.2"
    ssl_prefer_server_ciphers: bool = False
    server_tls_sslmode: str = "prefer"
    server_tls_ca_file: str = ""
    warnings: tuple[str, ...] = ()

    @property
    def primary_backend(self) -> Optional[BackendNode]:
        """Until failover exists, the lowest-numbered node is where writes go."""
        return self.backends[0] if self.backends else None


# Fields that name sockets we listen on or servers we hold connections to: a reload that
# changes them cannot be applied to the running process.
RESTART_REQUIRED: frozenset[str] = frozenset(
    {"listen_addresses", "port", "socket_dirs", "backends"}
)


class _Kind(NamedTuple):
    """How to read one type of value, and the words that tell a user what was expected."""

    parse: Callable[[str], Any]  # raises ValueError on a bad value
    allowed: str


_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_REAL = re.compile(_NUMBER + r"\Z")
# pgpool-II 4.x, like PostgreSQL, allows whitespace between number and unit, and the unit
# is case-sensitive ('5min', '5 min'; not '5MIN').
_TIME = re.compile(rf"({_NUMBER})\s*(ms|s|min|h|d)?\Z")
_SECONDS_PER_UNIT: dict[Optional[str], float] = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_BOOLEANS = {
    "on": True,
    "true": True,
    "yes": True,
    "1": True,
    "off": False,
    "false": False,
    "no": False,
    "0": False,
}


def _integer(low: int, high: Optional[int] = None) -> _Kind:
    """Integers are matched by regex first because int() also accepts '1_000' and ' 1 '."""

    def parse(text: str) -> int:
        text = text.strip()
        if not _INTEGER.match(text):
            raise ValueError(text)
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError(text)
        return value

    if high is None:
        return _Kind(parse, f"expected an integer >= {low}")
    return _Kind(parse, f"expected an integer from {low} to {high}")


def _parse_real(text: str) -> float:
    """float() alone would let 'nan', 'inf' and '1_0' through."""
    text = text.strip()
    if not _REAL.match(text):
        raise ValueError(text)
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise ValueError(text)
    return value + 0.0  # turns -0.0 into 0.0


def _parse_time(text: str) -> float:
    """Seconds, so that callers never need to know which unit the file used."""
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(text)
    seconds = float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(text)
    return seconds + 0.0


def _parse_boolean(text: str) -> bool:
    """pgpool-II's spellings; prefixes ('of') are refused since nobody needs them."""
    try:
        return _BOOLEANS[text.strip().lower()]
    except KeyError:
        raise ValueError(text) from None


def _split_on(separator: str) -> Callable[[str], tuple[str, ...]]:
    """Lists are written as one quoted string; '' is how a user says 'none at all'."""

    def parse(text: str) -> tuple[str, ...]:
        return tuple(item.strip() for item in text.split(separator) if item.strip())

    return parse


_TIME_KIND = _Kind(
    _parse_time, "expected a time >= 0 in seconds, or with a unit ms, s, min, h or d (e.g. 5min)"
)
_BOOLEAN_KIND = _Kind(_parse_boolean, "expected on/off, true/false, yes/no or 1/0")
_DIRECTORIES = _Kind(_split_on(","), "expected a comma-separated list of directories")


# The settings table: pgpool.conf name -> (Config field, how to read it).  Two names may
# share a field (synonyms); the default lives on the Config field.
def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(value)
        return value

    return parse


_SETTINGS: dict[str, tuple[str, _Kind]] = {
    "listen_addresses": (
        "listen_addresses",
        _Kind(_split_on(","), "expected a comma-separated list of addresses, '*' or ''"),
    ),
    "port": ("port", _integer(0, 65535)),
    "socket_dir": ("socket_dirs", _DIRECTORIES),
    "unix_socket_directories": ("socket_dirs", _DIRECTORIES),
    "num_init_children": ("num_init_children", _integer(1, 10000)),
    "max_pool": ("max_pool", _integer(1, 10000)),
    "child_life_time": ("child_life_time", _TIME_KIND),
    "child_max_connections": ("child_max_connections", _integer(0)),
    "connection_life_time": ("connection_life_time", _TIME_KIND),
    "client_idle_limit": ("client_idle_limit", _TIME_KIND),
    "authentication_timeout": ("authentication_timeout", _TIME_KIND),
    "connection_cache": ("connection_cache", _BOOLEAN_KIND),
    "reset_query_list": (
        "reset_query_list",
        _Kind(_split_on(";"), "expected SQL statements separated by ';'"),
    ),
    "log_connections": ("log_connections", _BOOLEAN_KIND),
    "smart_shutdown_timeout": ("smart_shutdown_timeout", _TIME_KIND),
    "enable_pool_hba": ("enable_pool_hba", _BOOLEAN_KIND),
    "pool_hba_file": ("pool_hba_file", _Kind(str, "expected a file path")),
    "pool_passwd": ("pool_passwd", _Kind(str, "expected a file path, or '' for none")),
    "allow_clear_text_frontend_auth": ("allow_clear_text_frontend_auth", _BOOLEAN_KIND),
    "ssl": ("ssl", _BOOLEAN_KIND),
    "ssl_key": ("ssl_key", _Kind(str, "expected a file path")),
    "ssl_cert": ("ssl_cert", _Kind(str, "expected a file path")),
    "ssl_ca_cert": ("ssl_ca_cert", _Kind(str, "expected a file path, or ''")),
    "ssl_ciphers": ("ssl_ciphers", _Kind(str, "expected an OpenSSL cipher list")),
    "ssl_min_protocol_version": (
        "ssl_min_protocol_version",
        _Kind(
            _one_of("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
            "expected TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
        ),
    ),
    "ssl_prefer_server_ciphers": ("ssl_prefer_server_ciphers", _BOOLEAN_KIND),
    "server_tls_sslmode": (
        "server_tls_sslmode",
        _Kind(
            _one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
            "expected disable, allow, prefer, require, verify-ca or verify-full",
        ),
    ),
    "server_tls_ca_file": ("server_tls_ca_file", _Kind(str, "expected a file path, or ''")),
}

# backend_<key>N: the key -> how to read it, or None for pgpool-II keys we accept unread so
# that an existing pgpool.conf loads without warnings.  Read keys are BackendNode fields.
_BACKEND_SETTINGS: dict[str, Optional[_Kind]] = {
    "hostname": _Kind(str, "expected a host name, an IP address or a socket directory"),
    "port": _integer(1, 65535),
    "weight": _Kind(_parse_real, "expected a number >= 0"),
    "data_directory": None,
    "flag": None,
    "application_name": None,
}
_MAX_BACKENDS = 128  # pgpool-II's limit: N is 0..127
# No leading zeros, so backend_hostname01 cannot silently alias backend_hostname1.
_BACKEND_NAME = re.compile(r"backend_([a-z_]+?)(0|[1-9][0-9]*)\Z")

_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=?\s*")
_UNQUOTED = re.compile(r"[^\s#']+")
_OCTAL = re.compile(r"[0-7]{1,3}")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _read_quoted(line: str, pos: int, where: str, name: str) -> tuple[str, int]:
    """PostgreSQL's string rules, which pgpool-II shares: '' and backslash escapes."""
    out: list[str] = []
    while pos < len(line):
        char = line[pos]
        if char == "'":
            if line.startswith("'", pos + 1):
                out.append("'")
                pos += 2
                continue
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(line):
            octal = _OCTAL.match(line, pos + 1)
            if octal is not None:
                out.append(chr(int(octal.group(), 8)))
                pos = octal.end()
            else:
                out.append(_ESCAPES.get(line[pos + 1], line[pos + 1]))
                pos += 2
            continue
        out.append(char)
        pos += 1
    raise ConfigError(
        f"{where}: {name}: unterminated quoted string; close it with ' on the same line"
    )


def _split_line(line: str, where: str) -> Optional[tuple[str, str]]:
    """One line to (lower-case name, value text), or None for a blank or comment line."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    match = _NAME.match(line)
    if match is None:
        raise ConfigError(
            f"{where}: syntax error at {stripped[:40]!r}; expected 'name = value' or a # comment"
        )
    name = match.group(1).lower()
    pos = match.end()
    if line.startswith("'", pos):
        value, pos = _read_quoted(line, pos + 1, where, name)
    else:
        token = _UNQUOTED.match(line, pos)
        if token is None:
            raise ConfigError(f"{where}: {name}: missing value; expected 'name = value'")
        value, pos = token.group(), token.end()
    rest = line[pos:].strip()
    if rest and not rest.startswith("#"):
        raise ConfigError(
            f"{where}: {name}: unexpected {rest[:40]!r} after the value; "
            "quote a value that holds spaces or quotes"
        )
    return name, value


def _convert(kind: _Kind, value: str, where: str, name: str) -> Any:
    try:
        return kind.parse(value)
    except ValueError:
        # repr() keeps the message on one line even when the value holds an escaped newline.
        raise ConfigError(f"{where}: {name}: invalid value {value!r}; {kind.allowed}") from None


def parse_config(text: str, path: str = "pgpool.conf") -> Config:
    """Parse pgpool.conf text; ``path`` is only used to name the file in messages.

    The result's ``path`` stays None: only :func:`load_config` knows a file was read.
    """
    values: dict[str, Any] = {}
    set_by: dict[str, tuple[str, int]] = {}  # field -> (setting, line) that last set it
    nodes: dict[int, dict[str, tuple[Any, int]]] = {}  # N -> key -> (value, line)
    warnings: list[tuple[int, str]] = []
    # split("\n"), not splitlines(): the latter also breaks on form feeds and U+2028, and then
    # our line numbers would not match the user's editor.
    for number, line in enumerate(text.split("\n"), start=1):
        where = f"{path}:{number}"
        entry = _split_line(line.rstrip("\r"), where)
        if entry is None:
            continue
        name, value = entry
        setting = _SETTINGS.get(name)
        if setting is not None:
            field, kind = setting
            values[field] = _convert(kind, value, where, name)
            previous = set_by.get(field)
            if previous is not None and previous[0] != name:
                warnings.append(
                    (
                        number,
                        f"{where}: {name} overrides {previous[0]} set on line {previous[1]}; "
                        "set only one of them",
                    )
                )
            set_by[field] = (name, number)
            continue
        backend = _BACKEND_NAME.match(name)
        if backend is not None and backend.group(1) in _BACKEND_SETTINGS:
            key, index = backend.group(1), int(backend.group(2))
            if index >= _MAX_BACKENDS:
                raise ConfigError(
                    f"{where}: {name}: node number {index} is out of range; "
                    f"expected 0 to {_MAX_BACKENDS - 1}"
                )
            backend_kind = _BACKEND_SETTINGS[key]
            if backend_kind is not None:
                parsed = _convert(backend_kind, value, where, name)
                nodes.setdefault(index, {})[key] = (parsed, number)
            continue
        warnings.append((number, f"{where}: unknown setting '{name}' ignored"))

    backends: list[BackendNode] = []
    for index in sorted(nodes):
        given = nodes[index]
        if given.get("hostname", ("", 0))[0]:
            backends.append(BackendNode(index, **{key: value for key, (value, _) in given.items()}))
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
    warnings.sort(key=lambda item: item[0])
    return Config(
        backends=tuple(backends),
        warnings=tuple(message for _, message in warnings),
        **values,
    )


def load_config(path: str) -> Config:
    """Read and parse the file at ``path``; any failure is a one-line ConfigError."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: cannot read: not UTF-8 text ({e.reason})") from None
    config = parse_config(text, path)
    files: dict[str, Any] = {
        name: _beside(path, getattr(config, name)) if getattr(config, name) else ""
        for name in _RELATIVE_PATHS
    }
    return replace(config, path=path, **files)


# File settings taken from pgpool.conf's directory when relative.
_RELATIVE_PATHS = (
    "pool_hba_file",
    "pool_passwd",
    "ssl_key",
    "ssl_cert",
    "ssl_ca_cert",
    "server_tls_ca_file",
)


def _beside(config_path: str, name: str) -> str:
    """A path relative to pgpool.conf's own directory, as pgpool-II resolves them."""
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), name)
