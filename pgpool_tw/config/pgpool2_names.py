"""pgpool-II 4.x settings that pgpool-tw recognises but does not act on yet, by feature.

The names are facts taken from pgpool-II's own setting list (4.0 to 4.6, with the names 4.2
renamed) and Debian's pgpool.conf; the grouping and the values below are ours.  A pgpool-II
user's file loads without one warning per such line: :mod:`pgpool_tw.config.report` turns
the ones that matter into one line per feature.

Each setting maps to its *neutral* value: the value at which pgpool-II would behave as
pgpool-tw does (usually pgpool-II's default when that default leaves a feature off), or None
when any value asks for something pgpool-tw does not do.  A feature may have a *switch*:
while the switch is neutral (in the file, or by pgpool-II's default when the file does not
set it) pgpool-II ignores the feature's other settings, and so does the report.
Pure data: no Twisted, no logging.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

__all__ = ["FEATURES", "Feature", "all_names", "feature_of", "indexed_base"]


class Feature(NamedTuple):
    title: str
    #: (name, pgpool-II's default, neutral value), or None when nothing turns it all on.
    switch: Optional[tuple[str, str, str]]
    settings: dict[str, Optional[str]]
    #: What to use instead, when pgpool-tw or twistd has it under another name.
    hint: str = ""


# Settings that pgpool-II numbers per node (backend_*N live in backends.py).  The health
# check names are read by health.py now; they stay here so indexed_base knows every name
# pgpool-II numbers.
_INDEXED = frozenset(
    {
        "health_check_period",
        "health_check_timeout",
        "health_check_user",
        "health_check_password",
        "health_check_database",
        "health_check_max_retries",
        "health_check_retry_delay",
        "connect_timeout",
        "hostname",
        "wd_port",
        "pgpool_port",
        "heartbeat_hostname",
        "heartbeat_port",
        "heartbeat_device",
        "heartbeat_destination",
        "heartbeat_destination_port",
        "other_pgpool_hostname",
        "other_pgpool_port",
        "other_wd_port",
    }
)

_WATCHDOG = (
    "wd_hostname wd_port wd_priority wd_authkey wd_ipc_socket_dir wd_listen_address "
    "wd_listen_port delegate_ip trusted_servers trusted_server_command ping_path "
    "if_cmd_path if_up_cmd if_down_cmd arping_path arping_cmd clear_memqcache_on_escalation "
    "wd_escalation_command wd_de_escalation_command failover_when_quorum_exists "
    "failover_require_consensus allow_multiple_failover_requests_from_node "
    "enable_consensus_with_half_votes wd_remove_shutdown_nodes wd_lost_node_removal_timeout "
    "wd_no_show_node_removal_timeout wd_monitoring_interfaces_list wd_lifecheck_method "
    "wd_interval wd_heartbeat_port wd_heartbeat_keepalive wd_heartbeat_deadtime "
    "wd_heartbeat_listen_addresses wd_heartbeat_listen_port wd_life_point wd_lifecheck_query "
    "wd_lifecheck_dbname wd_lifecheck_user wd_lifecheck_password hostname pgpool_port "
    "heartbeat_hostname heartbeat_port heartbeat_device heartbeat_destination "
    "heartbeat_destination_port other_pgpool_hostname other_pgpool_port other_wd_port"
)

FEATURES: tuple[Feature, ...] = (
    Feature(
        "native replication mode",
        None,
        {
            "replicate_select": "off",
            "insert_lock": "off",
            "lobj_lock_table": "",
            "replication_stop_on_mismatch": "off",
            "failover_if_affected_tuples_mismatch": "off",
        },
    ),
    Feature(
        "load balancing",
        ("load_balance_mode", "on", "off"),
        {
            # pglast skips leading white space as PostgreSQL does: pgpool-tw acts as 'on'.
            "ignore_leading_white_space": "on",
            "dml_adaptive_object_relationship_list": "",
        },
    ),
    Feature(
        "streaming replication check",
        ("sr_check_period", "10", "0"),
        {
            "replication_delay_source_cmd": "",
            "replication_delay_source_timeout": "10",
        },
    ),
    # pgpool-II's test hook: reads backend_down_request in logdir to fake a node's failure.
    Feature("health check testing", None, {"health_check_test": "off"}),
    Feature(
        "online recovery",
        None,
        {
            "recovery_user": "nobody",
            "recovery_password": "",
            "recovery_database": "postgres",
            "recovery_1st_stage_command": "",
            "recovery_2nd_stage_command": "",
            "recovery_timeout": "90",
            "client_idle_limit_in_recovery": "0",
        },
    ),
    Feature("watchdog", ("use_watchdog", "off", "off"), dict.fromkeys(_WATCHDOG.split())),
    Feature(
        "in-memory query cache",
        ("memory_cache_enabled", "off", "off"),
        dict.fromkeys(
            [
                "memqcache_method",
                "memqcache_memcached_host",
                "memqcache_memcached_port",
                "memqcache_total_size",
                "memqcache_max_num_cache",
                "memqcache_expire",
                "memqcache_auto_cache_invalidation",
                "memqcache_maxcache",
                "memqcache_cache_block_size",
                "memqcache_oiddir",
                "cache_safe_memqcache_table_list",
                "cache_unsafe_memqcache_table_list",
                "white_memqcache_table_list",
                "black_memqcache_table_list",
            ]
        ),
    ),
    Feature(
        "relation cache",
        None,
        {
            "relcache_expire": "0",
            "relcache_size": "256",
            "check_temp_table": "catalog",
            "check_unlogged_table": "on",
            "enable_shared_relcache": "on",
            "relcache_query_target": "primary",
        },
    ),
    Feature(
        "process management",
        None,
        {
            "reserved_connections": "0",
            "listen_backlog_multiplier": "2",
            "serialize_accept": "off",
            "unix_socket_group": "",
            "unix_socket_permissions": "0777",
            "process_management_mode": "static",
            "process_management_strategy": "gentle",
            "min_spare_children": "5",
            "max_spare_children": "10",
        },
    ),
    Feature(
        "files",
        None,
        {"pid_file_name": None, "work_dir": None},
        hint="twistd's --pidfile and --rundir do this",
    ),
    Feature(
        "logging",
        None,
        {
            "log_line_prefix": "%m: %a pid %p: ",
            "log_error_verbosity": "default",
            "client_min_messages": "notice",
            "log_min_messages": "warning",
            "log_hostname": "off",
            "notice_per_node_statement": "off",
            "log_client_messages": "off",
            "log_backend_messages": "none",
            "syslog_facility": "LOCAL0",
            "syslog_ident": "pgpool",
        },
        hint="twistd's --logfile and --syslog do this",
    ),
    Feature(
        "log file rotation",
        ("logging_collector", "off", "off"),
        dict.fromkeys(
            [
                "log_directory",
                "log_filename",
                "log_file_mode",
                "log_truncate_on_rotation",
                "log_rotation_age",
                "log_rotation_size",
            ]
        ),
        hint="twistd's --logfile rotates",
    ),
    Feature(
        "TLS",
        None,
        {
            "ssl_ca_cert_dir": "",
            "ssl_crl_file": "",
            "ssl_ecdh_curve": "prime256v1",
            "ssl_dh_params_file": "",
            "ssl_passphrase_command": "",
        },
    ),
)

_BY_NAME: dict[str, tuple[Feature, Optional[str]]] = {
    name.lower(): (feature, neutral)
    for feature in FEATURES
    for name, neutral in feature.settings.items()
}
_BY_NAME.update({f.switch[0]: (f, f.switch[2]) for f in FEATURES if f.switch is not None})
_INDEX = re.compile(r"(.*[a-z_])(0|[1-9][0-9]*)\Z")


def indexed_base(name: str) -> Optional[str]:
    """'health_check_period' for 'health_check_period1', when pgpool-II numbers that name."""
    match = _INDEX.match(name)
    if match is not None and match.group(1) in _INDEXED:
        return match.group(1)
    return None


def feature_of(name: str) -> Optional[tuple[Feature, Optional[str]]]:
    """(feature, neutral value) of a lower-case pgpool-II name, or None if it is not one."""
    found = _BY_NAME.get(name)
    if found is None:
        base = indexed_base(name)
        if base is not None:
            found = _BY_NAME.get(base)
    return found


def all_names() -> frozenset[str]:
    """Every pgpool-II name above, lower-case, without node numbers (for spelling hints)."""
    return frozenset(_BY_NAME)
