"""Reading pgpool-II's ``pgpool.conf`` into a frozen, validated :class:`Config`.

This module owns the one table of settings pgpool-tw acts on, with their ranges, and the
walk over a file that fills a ``Config``.  The line syntax is :mod:`.syntax`'s, the value
readers :mod:`.values`', the regex and redirect lists :mod:`.routing`'s, the ``backend_*N``
nodes :mod:`.backends`', the global and per-node health check settings :mod:`.health`', the
pool modes and which one a login gets :mod:`.pooling`'s, and the pgpool-II names pgpool-tw
knows but does not act on yet :mod:`.pgpool2_names`'.
Everything else in pgpool-tw receives a finished ``Config`` and never looks at the text.

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
import functools
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from pgpool_tw.config.backends import BACKEND_KEYS, MAX_BACKENDS, BackendNode, backend_key
from pgpool_tw.config.backends import build_backends as _build_backends
from pgpool_tw.config.escapes import EscapeError, check, unknown_escapes
from pgpool_tw.config.health import (
    HEALTH_CHECK_KEYS,
    HealthCheckSettings,
    build_health_checks,
    health_check_key,
)
from pgpool_tw.config.pgpool2_names import all_names, feature_of, indexed_base
from pgpool_tw.config.pooling import (
    POOL_MODE,
    POOL_MODE_LIST,
    POOL_MODE_LISTS,
    SESSION,
    PoolModeRule,
    mode_lookup,
)
from pgpool_tw.config.routing import (
    FUNCTION_LIST,
    QUERY_PATTERN_LIST,
    REDIRECT_LIST,
    REGEX_SETTINGS,
    Redirect,
    raw_value,
)
from pgpool_tw.config.syntax import ConfigError, read_entries
from pgpool_tw.config.values import (
    BOOLEAN,
    BYTES,
    DIRECTORIES,
    MILLISECONDS,
    TIME,
    BadValue,
    Kind,
    choice,
    integer,
    one_of,
    split_on,
)

__all__ = [
    "RESTART_REQUIRED",
    "BackendNode",
    "Config",
    "ConfigError",
    "HealthCheckSettings",
    "PoolModeRule",
    "Redirect",
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
    #: Clients still authenticating, at most (0: 64 * num_init_children, at least 1024);
    #: past it the oldest are closed.  pgpool-tw's own: a login in progress holds no slot.
    max_preauth_clients: int = 0
    #: TCP keepalives on client and server sockets (PostgreSQL's names; 0: the kernel's).
    tcp_keepalives_idle: int = 0
    tcp_keepalives_interval: int = 0
    tcp_keepalives_count: int = 0
    connection_cache: bool = True
    reset_query_list: tuple[str, ...] = ("ABORT", "DISCARD ALL")
    log_connections: bool = False
    #: One line as each client session ends: its length, user, database, address, bytes.
    log_disconnections: bool = False
    #: Every SQL statement a client sends (simple Query and Parse texts).
    log_statement: bool = False
    #: 'stderr' (twisted.logger's text lines) or 'jsonlog' (one JSON object per line);
    #: pgpool-II's 'syslog' is read with a warning (twistd --syslog does it).
    log_destination: str = "stderr"
    smart_shutdown_timeout: float = 60
    #: A drain (SIGUSR2, console SHUTDOWN WAIT_FOR_SERVERS) closes each client at its next
    #: transaction boundary; after this many seconds it shuts down fast. 0 waits forever.
    drain_timeout: float = 60
    #: PgBouncer's: TCP listeners set SO_REUSEPORT, so a second pooler can bind the same
    #: port while this one drains (a rolling restart).
    so_reuseport: bool = False
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
    #: backend_clustering_mode: 'streaming_replication' or 'raw' (pgpool-II's other modes
    #: run as 'raw', with a warning).  In 'raw' every query goes to the primary_backend.
    clustering_mode: str = "streaming_replication"
    #: Reads may go to standbys (streaming_replication only).
    load_balance_mode: bool = True
    #: Choose the load-balance node per read rather than once per session.
    statement_level_load_balance: bool = False
    #: off, transaction, trans_transaction, always or dml_adaptive: where reads go after a
    #: write (pgpool-II's meanings; see etc/pgpool.conf.sample).
    disable_load_balance_on_write: str = "transaction"
    #: Anchored, case-insensitive patterns over function names: a read calling one of these
    #: goes to the primary (write_) / only reads calling no other function may be balanced
    #: (read_only_).  pgpool-II wants at most one of the two set.
    write_function_list: tuple[re.Pattern[str], ...] = ()
    read_only_function_list: tuple[re.Pattern[str], ...] = ()
    #: Anchored, case-insensitive patterns over a query's whole text: matches go to the primary.
    primary_routing_query_pattern_list: tuple[re.Pattern[str], ...] = ()
    #: Where a session's reads go by its user, database or application_name (startup packet
    #: only); the first matching entry of a list wins, and app_name beats database beats user.
    user_redirect_preference_list: tuple[Redirect, ...] = ()
    database_redirect_preference_list: tuple[Redirect, ...] = ()
    app_name_redirect_preference_list: tuple[Redirect, ...] = ()
    #: Ignore SQL comments when deciding whether a query may be load balanced.
    allow_sql_comments: bool = False
    #: Seconds between replication-delay checks; 0 turns the check off.
    sr_check_period: float = 10
    #: Who the replication check logs in as; '' is not set.  A '' password means: take it
    #: from pool_passwd, then try none (pgpool-II's rule).
    sr_check_user: str = ""
    sr_check_password: str = field(default="", repr=False)
    sr_check_database: str = "postgres"
    #: A standby behind the primary by more than this many bytes of WAL takes no reads; 0 off.
    delay_threshold: int = 0
    #: The same by replay time, in seconds (the file says milliseconds unless it gives a
    #: unit); 0 off, and when set it is used instead of delay_threshold (pgpool-II 4.4+).
    delay_threshold_by_time: float = 0
    #: When the chosen standby is too far behind, pick the least delayed standby, not the primary.
    prefer_lower_delay_standby: bool = False
    #: none, always or if_over_threshold: when the replication check logs a standby's delay.
    log_standby_delay: str = "if_over_threshold"
    #: Log each statement with the node it was sent to.
    log_per_node_statement: bool = False
    #: pgpool-tw's own: after a session's write commits, its reads go only to a standby that
    #: has replayed that commit (or to the primary), whatever disable_load_balance_on_write says.
    read_your_writes: bool = True
    #: The unnumbered health_check_* and connect_timeout settings: every node's, unless ...
    health_check: HealthCheckSettings = HealthCheckSettings()
    #: ... the node has numbered ones (health_check_period1): (N, the global settings with
    #: N's laid over them), by N, only for nodes that have any.  See health_check_for.
    health_check_nodes: tuple[tuple[int, HealthCheckSettings], ...] = ()
    #: Commands run when a node is detached, attached again, and after a primary's failover
    #: for each other node (pgpool-II's % escapes; see etc/pgpool.conf.sample); '' runs none.
    failover_command: str = ""
    failback_command: str = ""
    follow_primary_command: str = ""
    #: An error reading from or writing to a server detaches it (on), or only ends the session.
    failover_on_backend_error: bool = True
    #: A server's shutdown or terminate error (57P01, 57P02) in a session detaches it.
    failover_on_backend_shutdown: bool = False
    #: Detach a primary its standbys do not stream from (streaming_replication only).
    detach_false_primary: bool = False
    #: Seconds to look for the new primary after a failover; 0 looks forever.
    search_primary_node_timeout: float = 300
    #: Attach a detached standby again once it streams from the primary, at most once per
    #: auto_failback_interval seconds.
    auto_failback: bool = False
    auto_failback_interval: float = 60
    #: Where pgpool_status (the nodes' up/down state across restarts) is kept; a relative
    #: path is taken from pgpool.conf's directory.
    logdir: str = "/tmp"
    #: session or transaction (PgBouncer's pool_mode): how a login that neither list below
    #: names is pooled.  Read it through pool_mode_for.
    pool_mode: str = SESSION
    #: 'pattern:mode' entries over the user name / the database name; the first match of
    #: the user list wins, then the first of the database list, then pool_mode.
    user_pool_mode_list: tuple[PoolModeRule, ...] = ()
    database_pool_mode_list: tuple[PoolModeRule, ...] = ()
    #: Clients of transaction-mode pools served at once; past it a login gets FATAL 53300.
    max_client_conn: int = 100
    #: Transaction mode, per pool key (node, user, database, startup options): the server
    #: connections it may have; ...
    default_pool_size: int = 20
    #: ... those the pooler keeps open once the key has been used; ...
    min_pool_size: int = 0
    #: ... and the extra ones it may open for a client that has waited
    #: reserve_pool_timeout seconds.
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    #: Seconds a client may wait for a server before FATAL 53300; 0 waits forever.
    query_wait_timeout: float = 120.0
    #: Seconds a transaction-mode server may stay idle before it is closed; 0 never.
    server_idle_timeout: float = 600.0
    #: Per server, pooler-named prepared statements kept (the least recently used closed
    #: past it); 0: a named protocol statement pins its client to its server instead.
    max_prepared_statements: int = 200
    #: Where Prometheus scrapes /metrics (admin/metrics.py); empty: no endpoint.
    metrics_listen_addresses: tuple[str, ...] = ()
    metrics_port: int = 9719
    #: pgpool-II's PCP port (admin/pcp.py), open only when pcp.conf exists.  pgpool-II's
    #: default address is '*'; here 'localhost', since PCP's md5 login travels in clear
    #: text and its commands stop the pooler and detach nodes.
    pcp_listen_addresses: tuple[str, ...] = ("localhost",)
    pcp_port: int = 9898
    pcp_socket_dirs: tuple[str, ...] = ("/tmp",)
    #: Log each PCP connection and command (pgpool-II: each PCP process's start and end).
    log_pcp_processes: bool = True
    #: PgBouncer's: the users the admin console lets in, with every command, or with the
    #: SHOW commands only.
    admin_users: tuple[str, ...] = ()
    stats_users: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: Every name the file set, with its parsed value (ours, backend_*N) or its text
    #: (pgpool-II's others): what a reload diffs and what the unused-settings report reads.
    #: Not compared: two Configs that behave alike are equal however they were written.
    given: tuple[tuple[str, Any], ...] = field(default=(), compare=False, repr=False)

    @property
    def preauth_cap(self) -> int:
        """Clients still authenticating at most (``max_preauth_clients``, or its default:
        a generous multiple of the sessions served at once)."""
        return self.max_preauth_clients or max(1024, 64 * self.num_init_children)

    @property
    def connect_timeout(self) -> float:
        """pgpool-II's connect_timeout in seconds (0: none): reaching a server, TCP and
        its startup, for client logins as for health checks."""
        return self.health_check.connect_timeout

    def health_check_for(self, index: int) -> HealthCheckSettings:
        """Node ``index``'s health check settings: its own numbered ones over the global ones."""
        for node, settings in self.health_check_nodes:
            if node == index:
                return settings
        return self.health_check

    def pool_mode_for(self, user: str, database: str) -> str:
        """'session' or 'transaction' for a login as ``user`` to ``database``; called once
        per login, so the answers are cached with this Config (a reload's new Config starts
        afresh)."""
        return self._pool_mode_lookup(user, database)

    @functools.cached_property
    def _pool_mode_lookup(self) -> Callable[[str, str], str]:
        # Not a field: it is not a setting, nor compared.  cached_property writes the
        # instance's __dict__ directly, which a frozen dataclass allows.
        return mode_lookup(self.pool_mode, self.user_pool_mode_list, self.database_pool_mode_list)

    @property
    def primary_backend(self) -> Optional[BackendNode]:
        """The lowest-numbered node: where writes go until a replication check (or
        failover) names the primary (cluster.Cluster decides that at run time)."""
        return self.backends[0] if self.backends else None


# Fields that name sockets we listen on or servers we hold connections to, or that pgpool-II
# reads only at server start (backend_clustering_mode, load_balance_mode, logdir): a reload that
# changes them cannot be applied to the running process.  For "backends" only a node's
# address or data directory, or the set of nodes, needs a restart (report.restart_needed).
RESTART_REQUIRED: frozenset[str] = frozenset(
    {
        "listen_addresses",
        "port",
        "socket_dirs",
        "metrics_listen_addresses",
        "metrics_port",
        "pcp_listen_addresses",
        "pcp_port",
        "pcp_socket_dirs",
        "so_reuseport",
        "backends",
        "clustering_mode",
        "load_balance_mode",
        "logdir",
        "log_destination",
    }
)

STREAMING_REPLICATION = "streaming_replication"
RAW = "raw"
#: pgpool-II's modes pgpool-tw reads but runs as raw (see _clustering_mode).
UNSUPPORTED_MODES = ("native_replication", "logical_replication", "slony", "snapshot_isolation")
_LOG_STANDBY_DELAY = ("none", "always", "if_over_threshold")
_ON_WRITE = ("off", "transaction", "trans_transaction", "always", "dml_adaptive")


def _command(text: str) -> str:
    """A failover-type command line: each % escape must land where its value can be quoted
    (escapes.py refuses, say, an escape inside $( ))."""
    try:
        check(text)
    except EscapeError as e:
        raise BadValue(str(e)) from None
    return text


_COMMAND = Kind(_command, "expected a command, or '' for none")


def _directory(text: str) -> str:
    """'' is refused: pgpool-II would keep its files at the root directory."""
    if not text.strip():
        raise ValueError(text)
    return text


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
    "max_preauth_clients": ("max_preauth_clients", integer(0, 1000000)),
    "tcp_keepalives_idle": ("tcp_keepalives_idle", integer(0, 2147483647)),
    "tcp_keepalives_interval": ("tcp_keepalives_interval", integer(0, 2147483647)),
    "tcp_keepalives_count": ("tcp_keepalives_count", integer(0, 2147483647)),
    "connection_cache": ("connection_cache", BOOLEAN),
    "reset_query_list": (
        "reset_query_list",
        Kind(split_on(";"), "expected SQL statements separated by ';'"),
    ),
    "log_connections": ("log_connections", BOOLEAN),
    "log_disconnections": ("log_disconnections", BOOLEAN),
    "log_statement": ("log_statement", BOOLEAN),
    "log_destination": (
        "log_destination",
        Kind(split_on(","), "expected stderr or jsonlog (syslog: use twistd --syslog)"),
    ),
    "smart_shutdown_timeout": ("smart_shutdown_timeout", TIME),
    "drain_timeout": ("drain_timeout", TIME),
    "so_reuseport": ("so_reuseport", BOOLEAN),
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
    "backend_clustering_mode": (
        "clustering_mode",
        Kind(
            choice(STREAMING_REPLICATION, RAW, *UNSUPPORTED_MODES),
            "expected streaming_replication, native_replication, logical_replication, slony, "
            "snapshot_isolation or raw",
        ),
    ),
    "load_balance_mode": ("load_balance_mode", BOOLEAN),
    "statement_level_load_balance": ("statement_level_load_balance", BOOLEAN),
    "disable_load_balance_on_write": (
        "disable_load_balance_on_write",
        Kind(
            choice(*_ON_WRITE, "dml_adaptive_global"),
            "expected off, transaction, trans_transaction, always or dml_adaptive",
        ),
    ),
    "write_function_list": ("write_function_list", FUNCTION_LIST),
    "black_function_list": ("write_function_list", FUNCTION_LIST),
    "read_only_function_list": ("read_only_function_list", FUNCTION_LIST),
    "white_function_list": ("read_only_function_list", FUNCTION_LIST),
    "primary_routing_query_pattern_list": (
        "primary_routing_query_pattern_list",
        QUERY_PATTERN_LIST,
    ),
    "black_query_pattern_list": ("primary_routing_query_pattern_list", QUERY_PATTERN_LIST),
    "user_redirect_preference_list": ("user_redirect_preference_list", REDIRECT_LIST),
    "database_redirect_preference_list": ("database_redirect_preference_list", REDIRECT_LIST),
    "app_name_redirect_preference_list": ("app_name_redirect_preference_list", REDIRECT_LIST),
    "allow_sql_comments": ("allow_sql_comments", BOOLEAN),
    "sr_check_period": ("sr_check_period", TIME),
    "sr_check_user": ("sr_check_user", Kind(str, "expected a user name")),
    "sr_check_password": ("sr_check_password", Kind(str, "expected a password, or ''")),
    "sr_check_database": ("sr_check_database", Kind(str, "expected a database name")),
    "delay_threshold": ("delay_threshold", BYTES),
    "delay_threshold_by_time": ("delay_threshold_by_time", MILLISECONDS),
    "prefer_lower_delay_standby": ("prefer_lower_delay_standby", BOOLEAN),
    "log_standby_delay": (
        "log_standby_delay",
        Kind(choice(*_LOG_STANDBY_DELAY), "expected none, always or if_over_threshold"),
    ),
    "log_per_node_statement": ("log_per_node_statement", BOOLEAN),
    "read_your_writes": ("read_your_writes", BOOLEAN),
    "failover_command": ("failover_command", _COMMAND),
    "failback_command": ("failback_command", _COMMAND),
    "follow_primary_command": ("follow_primary_command", _COMMAND),
    "follow_master_command": ("follow_primary_command", _COMMAND),
    "failover_on_backend_error": ("failover_on_backend_error", BOOLEAN),
    "fail_over_on_backend_error": ("failover_on_backend_error", BOOLEAN),
    "failover_on_backend_shutdown": ("failover_on_backend_shutdown", BOOLEAN),
    "detach_false_primary": ("detach_false_primary", BOOLEAN),
    "search_primary_node_timeout": ("search_primary_node_timeout", TIME),
    "auto_failback": ("auto_failback", BOOLEAN),
    "auto_failback_interval": ("auto_failback_interval", TIME),
    "logdir": ("logdir", Kind(_directory, "expected a directory")),
    "pool_mode": ("pool_mode", POOL_MODE),
    "user_pool_mode_list": ("user_pool_mode_list", POOL_MODE_LIST),
    "database_pool_mode_list": ("database_pool_mode_list", POOL_MODE_LIST),
    "max_client_conn": ("max_client_conn", integer(1)),
    "default_pool_size": ("default_pool_size", integer(1)),
    "min_pool_size": ("min_pool_size", integer(0)),
    "reserve_pool_size": ("reserve_pool_size", integer(0)),
    "reserve_pool_timeout": ("reserve_pool_timeout", TIME),
    "query_wait_timeout": ("query_wait_timeout", TIME),
    "server_idle_timeout": ("server_idle_timeout", TIME),
    "max_prepared_statements": ("max_prepared_statements", integer(0)),
    "metrics_listen_addresses": (
        "metrics_listen_addresses",
        Kind(split_on(","), "expected a comma-separated list of addresses, '*' or ''"),
    ),
    "metrics_port": ("metrics_port", integer(0, 65535)),
    "pcp_listen_addresses": (
        "pcp_listen_addresses",
        Kind(split_on(","), "expected a comma-separated list of addresses, '*' or ''"),
    ),
    "pcp_port": ("pcp_port", integer(0, 65535)),
    "pcp_socket_dir": ("pcp_socket_dirs", DIRECTORIES),
    "log_pcp_processes": ("log_pcp_processes", BOOLEAN),
    "admin_users": ("admin_users", Kind(split_on(","), "expected a comma-separated list of users")),
    "stats_users": ("stats_users", Kind(split_on(","), "expected a comma-separated list of users")),
}

# pgpool-II before 4.2 chose the mode with these; they still mean what they meant.
_OLD_MODE: dict[str, Kind] = {
    "master_slave_mode": BOOLEAN,
    "master_slave_sub_mode": Kind(
        choice("slony", "stream", "logical"), "expected stream, slony or logical"
    ),
    "replication_mode": BOOLEAN,
}
_OLD_SUB_MODES = {
    "stream": STREAMING_REPLICATION,
    "slony": "slony",
    "logical": "logical_replication",
}


def field_of(name: str) -> Optional[str]:
    """The Config field a pgpool.conf name sets ('backends' for backend_*N), or None."""
    if name in _SETTINGS:
        return _SETTINGS[name][0]
    if name in _OLD_MODE:
        return "clustering_mode"
    health = health_check_key(name)
    if health is not None:
        return "health_check" if health[1] is None else "health_check_nodes"
    return "backends" if backend_key(name) is not None else None


def setting_kind(name: str) -> Optional[Kind]:
    """How pgpool.conf setting ``name`` reads (PGPOOL SET uses it), or None: not ours."""
    entry = _SETTINGS.get(name)
    return entry[1] if entry is not None else None


def value_text(value: Any) -> str:
    """A setting's value as pgpool-II and PgBouncer show it (on/off, lists with commas)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # times are seconds: 350, not 350.0
    return "" if value is None else str(value)


def setting_items(config: Config) -> list[tuple[str, str, str]]:
    """(name, value, where it came from) for every pgpool.conf setting pgpool-tw reads,
    by name, passwords hidden: PGPOOL SHOW ALL."""
    given = dict(config.given)
    return [
        (name, shown, "set in pgpool.conf" if name in given else "default")
        for name in sorted(_SETTINGS)
        for shown in (setting_text(config, name) or "",)
    ]


def setting_text(config: Config, name: str) -> Optional[str]:
    """Setting ``name``'s value as text (a password hidden), or None when pgpool-tw
    does not read it."""
    entry = _SETTINGS.get(name)
    if entry is None:
        return None
    value = getattr(config, entry[0])
    return "********" if "password" in name and value else value_text(value)


def _convert(kind: Kind, value: str, where: str, name: str) -> Any:
    try:
        return kind.parse(value)
    except BadValue as e:
        raise ConfigError(f"{where}: {name}: {e}") from None
    except ValueError:
        # repr() keeps the message on one line even when the value holds an escaped newline.
        raise ConfigError(f"{where}: {name}: invalid value {value!r}; {kind.allowed}") from None


# Names a misspelling is compared with: ours, pgpool-II's, and backend_<key>.
_KNOWN = sorted(
    set(_SETTINGS)
    | set(_OLD_MODE)
    | set(HEALTH_CHECK_KEYS)
    | all_names()
    | {f"backend_{key}" for key in BACKEND_KEYS}
)


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
    old_mode: dict[str, tuple[Any, int]] = {}  # master_slave_mode etc. -> (value, line)
    health: dict[str, Any] = {}  # health_check_period etc. -> value
    health_nodes: dict[int, dict[str, tuple[Any, int]]] = {}  # N -> name -> (value, line)
    lines = text.split("\n")
    for number, name, value in read_entries(text, path):
        where = f"{path}:{number}"
        setting = _SETTINGS.get(name)
        if setting is not None:
            field_name, kind = setting
            if name in REGEX_SETTINGS or name in POOL_MODE_LISTS:
                value = raw_value(lines[number - 1], value)
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
        if name in _OLD_MODE:
            old_mode[name] = (_convert(_OLD_MODE[name], value, where, name), number)
            given[name] = old_mode[name][0]
            continue
        health_key = health_check_key(name)
        if health_key is not None:
            key, node = health_key
            if node is not None:
                _check_node(node, where, name)
            parsed = given[name] = _convert(HEALTH_CHECK_KEYS[key][1], value, where, name)
            if node is None:
                health[key] = parsed
            else:
                health_nodes.setdefault(node, {})[key] = (parsed, number)
            continue
        backend = backend_key(name)
        if backend is not None:
            key, index = backend
            _check_node(index, where, name)
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
    indexes = {server.index for server in backends}
    values["health_check"], values["health_check_nodes"], node_warnings = build_health_checks(
        health, health_nodes, indexes, path
    )
    warnings += node_warnings
    warnings += _clustering_mode(values, set_by, old_mode, path)
    warnings += _load_balancing(values, set_by, path)
    warnings += _unknown_escapes(values, set_by, path)
    warnings += _pool_sizes(values, set_by, path)
    warnings += _log_destination(values, set_by, path)
    warnings.sort(key=lambda item: item[0])
    return Config(
        backends=backends,
        warnings=tuple(message for _, message in warnings),
        given=tuple(given.items()),
        **values,
    )


def _check_node(index: int, where: str, name: str) -> None:
    """pgpool-II numbers nodes 0 to 127, in backend_*N and health_check_*N alike."""
    if index >= MAX_BACKENDS:
        raise ConfigError(
            f"{where}: {name}: node number {index} is out of range; "
            f"expected 0 to {MAX_BACKENDS - 1}"
        )


def _clustering_mode(
    values: dict[str, Any],
    set_by: dict[str, tuple[str, int]],
    old_mode: dict[str, tuple[Any, int]],
    path: str,
) -> list[tuple[int, str]]:
    """Settle ``clustering_mode`` from backend_clustering_mode or the pre-4.2 spelling.

    A mode pgpool-tw does not support runs as raw (every query to the primary backend) with
    one warning rather than refusing to start: pgpool-tw ran every file as raw before it
    knew this setting, so a file that worked keeps working, and raw never sends a read to a
    node that may not have the data.  The warning says what the user loses.
    """
    warnings: list[tuple[int, str]] = []
    mode = values.get("clustering_mode")
    line = set_by["clustering_mode"][1] if mode is not None else 0
    if old_mode:
        old_line = max(number for _, number in old_mode.values())
        old_names = [name for name in _OLD_MODE if name in old_mode]
        if mode is not None:
            first = min(old_mode.values(), key=lambda item: item[1])[1]
            warnings.append(
                (
                    line,
                    f"{path}:{line}: backend_clustering_mode overrides {' and '.join(old_names)} "
                    f"set on line {first}; set only backend_clustering_mode",
                )
            )
        else:
            line = old_line
            if old_mode.get("replication_mode", (False, 0))[0]:
                mode = "native_replication"
            elif old_mode.get("master_slave_mode", (False, 0))[0]:
                sub = old_mode.get("master_slave_sub_mode", ("slony", 0))[0]
                mode = _OLD_SUB_MODES[sub]
            else:
                mode = RAW  # both off: pgpool-II before 4.2 ran in raw mode
    if mode in UNSUPPORTED_MODES:
        warnings.append(
            (
                line,
                f"{path}:{line}: clustering mode {mode} is not supported by pgpool-tw; "
                "running as raw (every query goes to the primary backend)",
            )
        )
        mode = RAW
    if mode is not None:
        values["clustering_mode"] = mode
    return warnings


#: log_destination's values: the text lines twistd writes, or PostgreSQL 15's JSON lines.
LOG_DESTINATIONS = ("stderr", "jsonlog")


def _log_destination(
    values: dict[str, Any], set_by: dict[str, tuple[str, int]], path: str
) -> list[tuple[int, str]]:
    """One destination of pgpool-II's list: stderr or jsonlog.  syslog is dropped with one
    warning (twistd's own --syslog sends the log there); two streams at once are refused,
    since the process writes one log."""
    given = values.get("log_destination")
    if given is None:
        return []
    line = set_by["log_destination"][1]
    where = f"{path}:{line}: log_destination"
    names = [name.lower() for name in given]
    unknown = [name for name in names if name not in LOG_DESTINATIONS and name != "syslog"]
    if unknown:
        raise ConfigError(
            f"{where}: invalid value {unknown[0]!r}; expected stderr or jsonlog "
            "(syslog: use twistd --syslog)"
        )
    chosen = sorted({name for name in names if name != "syslog"})
    if len(chosen) > 1:
        raise ConfigError(f"{where}: choose one of stderr or jsonlog: pgpool-tw writes one log")
    values["log_destination"] = chosen[0] if chosen else "stderr"
    if "syslog" in names:
        return [
            (
                line,
                f"{where}: syslog is not supported by pgpool-tw; logging to "
                f"{values['log_destination']} (twistd --syslog sends the log to syslog)",
            )
        ]
    return []


def _load_balancing(
    values: dict[str, Any], set_by: dict[str, tuple[str, int]], path: str
) -> list[tuple[int, str]]:
    """Warnings for load-balancing values pgpool-II takes and pgpool-tw reads otherwise."""
    warnings: list[tuple[int, str]] = []
    if values.get("disable_load_balance_on_write") == "dml_adaptive_global":
        line = set_by["disable_load_balance_on_write"][1]
        warnings.append(
            (
                line,
                f"{path}:{line}: disable_load_balance_on_write = dml_adaptive_global is not "
                "supported by pgpool-tw; using dml_adaptive (writes are tracked per session; "
                "read_your_writes covers reads after a commit)",
            )
        )
        values["disable_load_balance_on_write"] = "dml_adaptive"
    if values.get("write_function_list") and values.get("read_only_function_list"):
        line = max(set_by["write_function_list"][1], set_by["read_only_function_list"][1])
        warnings.append(
            (
                line,
                f"{path}:{line}: write_function_list and read_only_function_list are both set; "
                "pgpool-II allows only one of them (pgpool-tw uses write_function_list)",
            )
        )
        values["read_only_function_list"] = ()
    return warnings


def _unknown_escapes(
    values: dict[str, Any], set_by: dict[str, tuple[str, int]], path: str
) -> list[tuple[int, str]]:
    """pgpool-II drops an unknown % escape from a command without a word; say so once."""
    warnings: list[tuple[int, str]] = []
    for field_name in ("failover_command", "failback_command", "follow_primary_command"):
        unknown = unknown_escapes(values.get(field_name, ""))
        if unknown:
            name, line = set_by[field_name]
            warnings.append(
                (
                    line,
                    f"{path}:{line}: {name}: {', '.join(unknown)}: not a pgpool-II escape; "
                    "dropped, as pgpool-II drops it (%% is a percent sign)",
                )
            )
    return warnings


def _pool_sizes(
    values: dict[str, Any], set_by: dict[str, tuple[str, int]], path: str
) -> list[tuple[int, str]]:
    """min_pool_size above default_pool_size is not an error, as PgBouncer keeps at most
    default_pool_size servers anyway; but the file says something it will not get."""
    low = values.get("min_pool_size", Config.min_pool_size)
    high = values.get("default_pool_size", Config.default_pool_size)
    if low <= high:
        return []
    line = max(set_by[name][1] for name in ("min_pool_size", "default_pool_size") if name in set_by)
    return [
        (
            line,
            f"{path}:{line}: min_pool_size ({low}) is more than default_pool_size ({high}); "
            f"at most {high} servers are kept per pool",
        )
    ]


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
    "logdir",
)


def _beside(config_path: str, name: str) -> str:
    """A path relative to pgpool.conf's own directory, as pgpool-II resolves them."""
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), name)
