"""Reading pgpool-II's ``pgpool.conf`` into a frozen, validated :class:`Config`.

This module owns the one table of settings pgpool-tw acts on, with their ranges, and the
walk over a file that fills a ``Config``.  The line syntax is :mod:`.syntax`'s, the value
readers :mod:`.values`', the ``backend_*N`` nodes :mod:`.backends`', and the pgpool-II names
pgpool-tw knows but does not act on yet :mod:`.pgpool2_names`'.  Everything else in
pgpool-tw receives a finished ``Config`` and never looks at the text.

It must never import Twisted, open sockets, log, or read globals: parsing is a pure function
from text to either a ``Config`` or one :class:`ConfigError`, so a reload can build a
candidate configuration, diff it against the running one and refuse it with no side effects.
A setting that is neither ours nor pgpool-II's is not an error (pgpool-II versions add
names); it is returned in ``Config.warnings``, with the nearest known name when there is one.

Adding a setting takes one field on :class:`Config` (which holds the default) and one row in
``_SETTINGS`` (which holds the parser and the text that says what is allowed).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from pgpool_tw.config.backends import BACKEND_KEYS, MAX_BACKENDS, BackendNode, backend_key
from pgpool_tw.config.backends import build_backends as _build_backends
from pgpool_tw.config.pgpool2_names import all_names, feature_of, indexed_base
from pgpool_tw.config.syntax import ConfigError, read_entries
from pgpool_tw.config.values import BOOLEAN, DIRECTORIES, TIME, Kind, integer, one_of, split_on

__all__ = [
    "RESTART_REQUIRED",
    "BackendNode",
    "Config",
    "ConfigError",
    "field_of",
    "load_config",
    "parse_config",
]


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
    #: Every name the file set, with its parsed value (ours, backend_*N) or its text
    #: (pgpool-II's others): what a reload diffs and what the unused-settings report reads.
    #: Not compared: two Configs that behave alike are equal however they were written.
    given: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def primary_backend(self) -> Optional[BackendNode]:
        """Until failover exists, the lowest-numbered node is where writes go."""
        return self.backends[0] if self.backends else None


# Fields that name sockets we listen on or servers we hold connections to: a reload that
# changes them cannot be applied to the running process.
RESTART_REQUIRED: frozenset[str] = frozenset(
    {"listen_addresses", "port", "socket_dirs", "backends"}
)


# The settings table: pgpool.conf name -> (Config field, how to read it).  Two names may
# share a field (synonyms); the default lives on the Config field.
_SETTINGS: dict[str, tuple[str, Kind]] = {
    "listen_addresses": (
        "listen_addresses",
        Kind(split_on(","), "expected a comma-separated list of addresses, '*' or ''"),
    ),
    "port": ("port", integer(0, 65535)),
    "socket_dir": ("socket_dirs", DIRECTORIES),
    "unix_socket_directories": ("socket_dirs", DIRECTORIES),
    "num_init_children": ("num_init_children", integer(1, 10000)),
    "max_pool": ("max_pool", integer(1, 10000)),
    "child_life_time": ("child_life_time", TIME),
    "child_max_connections": ("child_max_connections", integer(0)),
    "connection_life_time": ("connection_life_time", TIME),
    "client_idle_limit": ("client_idle_limit", TIME),
    "authentication_timeout": ("authentication_timeout", TIME),
    "connection_cache": ("connection_cache", BOOLEAN),
    "reset_query_list": (
        "reset_query_list",
        Kind(split_on(";"), "expected SQL statements separated by ';'"),
    ),
    "log_connections": ("log_connections", BOOLEAN),
    "smart_shutdown_timeout": ("smart_shutdown_timeout", TIME),
    "enable_pool_hba": ("enable_pool_hba", BOOLEAN),
    "pool_hba_file": ("pool_hba_file", Kind(str, "expected a file path")),
    "pool_passwd": ("pool_passwd", Kind(str, "expected a file path, or '' for none")),
    "allow_clear_text_frontend_auth": ("allow_clear_text_frontend_auth", BOOLEAN),
    "ssl": ("ssl", BOOLEAN),
    "ssl_key": ("ssl_key", Kind(str, "expected a file path")),
    "ssl_cert": ("ssl_cert", Kind(str, "expected a file path")),
    "ssl_ca_cert": ("ssl_ca_cert", Kind(str, "expected a file path, or ''")),
    "ssl_ciphers": ("ssl_ciphers", Kind(str, "expected an OpenSSL cipher list")),
    "ssl_min_protocol_version": (
        "ssl_min_protocol_version",
        Kind(
            one_of("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
            "expected TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
        ),
    ),
    "ssl_prefer_server_ciphers": ("ssl_prefer_server_ciphers", BOOLEAN),
    "server_tls_sslmode": (
        "server_tls_sslmode",
        Kind(
            one_of("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
            "expected disable, allow, prefer, require, verify-ca or verify-full",
        ),
    ),
    "server_tls_ca_file": ("server_tls_ca_file", Kind(str, "expected a file path, or ''")),
}


def field_of(name: str) -> Optional[str]:
    """The Config field a pgpool.conf name sets ('backends' for backend_*N), or None."""
    if name in _SETTINGS:
        return _SETTINGS[name][0]
    return "backends" if backend_key(name) is not None else None


def _convert(kind: Kind, value: str, where: str, name: str) -> Any:
    try:
        return kind.parse(value)
    except ValueError:
        # repr() keeps the message on one line even when the value holds an escaped newline.
        raise ConfigError(f"{where}: {name}: invalid value {value!r}; {kind.allowed}") from None


# Names a misspelling is compared with: ours, pgpool-II's, and backend_<key>.
_KNOWN = sorted(set(_SETTINGS) | all_names() | {f"backend_{key}" for key in BACKEND_KEYS})


def _unknown(name: str, where: str) -> str:
    """The warning for a name that is neither ours nor pgpool-II's, with a likely fix."""
    stem = name.rstrip("0123456789")
    digits = name[len(stem) :]
    close = difflib.get_close_matches(stem, _KNOWN, n=1, cutoff=0.8) if digits else []
    if close and close[0] + digits != name:
        close = [close[0] + digits]
    else:
        close = difflib.get_close_matches(name, _KNOWN, n=1, cutoff=0.8)
    if close:
        return f"{where}: unknown setting '{name}' ignored; did you mean '{close[0]}'?"
    return f"{where}: unknown setting '{name}' ignored"


def parse_config(text: str, path: str = "pgpool.conf") -> Config:
    """Parse pgpool.conf text; ``path`` is only used to name the file in messages.

    The result's ``path`` stays None: only :func:`load_config` knows a file was read.
    """
    values: dict[str, Any] = {}
    given: dict[str, Any] = {}
    set_by: dict[str, tuple[str, int]] = {}  # field -> (setting, line) that last set it
    nodes: dict[int, dict[str, tuple[Any, int]]] = {}  # N -> key -> (value, line)
    warnings: list[tuple[int, str]] = []
    for number, name, value in read_entries(text, path):
        where = f"{path}:{number}"
        setting = _SETTINGS.get(name)
        if setting is not None:
            field_name, kind = setting
            values[field_name] = given[name] = _convert(kind, value, where, name)
            previous = set_by.get(field_name)
            if previous is not None and previous[0] != name:
                warnings.append(
                    (
                        number,
                        f"{where}: {name} overrides {previous[0]} set on line {previous[1]}; "
                        "set only one of them",
                    )
                )
            set_by[field_name] = (name, number)
            continue
        backend = backend_key(name)
        if backend is not None:
            key, index = backend
            if index >= MAX_BACKENDS:
                raise ConfigError(
                    f"{where}: {name}: node number {index} is out of range; "
                    f"expected 0 to {MAX_BACKENDS - 1}"
                )
            parsed = _convert(BACKEND_KEYS[key], value, where, name)
            nodes.setdefault(index, {})[key] = (parsed, number)
            given[name] = parsed
            continue
        if feature_of(name) is not None or indexed_base(name) is not None:
            given[name] = value
            continue
        warnings.append((number, _unknown(name, where)))

    backends, node_warnings = _build_backends(nodes, path)
    warnings += node_warnings
    warnings.sort(key=lambda item: item[0])
    return Config(
        backends=backends,
        warnings=tuple(message for _, message in warnings),
        given=tuple(given.items()),
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
