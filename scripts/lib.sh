# Shared steps of scripts/test and scripts/run; source it, do not run it.
#
# Installs what a fresh Debian machine lacks (PostgreSQL, python3-venv, a C compiler and
# the Python headers for the C relay) with apt-get when we are root, and says what to install otherwise. Never starts or stops any server.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
_APT_UPDATED=""

log() { printf '==> %s\n' "$*" >&2; }

# apt_install PKG...: install Debian packages non-interactively (root only).
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        log "missing packages: $*; install them with: sudo apt-get install -y $*"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$_APT_UPDATED" ]; then
        log "apt-get update"
        apt-get update -q </dev/null
        _APT_UPDATED=1
    fi
    log "apt-get install $*"
    apt-get install -y -q "$@" </dev/null
}

# pg_bindir: newest /usr/lib/postgresql/*/bin holding initdb, or nothing.
pg_bindir() {
    local initdb
    initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$initdb" ] && dirname "$initdb"
    return 0
}

# ensure_postgres: install PostgreSQL if missing; put its bindir (psql, pgbench) on PATH.
ensure_postgres() {
    local bindir
    bindir="$(pg_bindir)"
    if [ -z "$bindir" ]; then
        apt_install postgresql postgresql-contrib
        bindir="$(pg_bindir)"
        if [ -z "$bindir" ]; then
            log "PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb found"
            exit 1
        fi
    fi
    export PATH="$bindir:$PATH"
}

# ensure_compiler: gcc and Python.h, so that pip builds pgpool_tw/engine/_speedups.c (CPython only;
# without them the build is skipped and the pure-Python relay runs).
ensure_compiler() {
    local has_headers
    has_headers="$("$VENV/bin/python" -c 'import os, platform, sysconfig
inc = sysconfig.get_paths()["include"]
print(platform.python_implementation() != "CPython" or os.path.exists(os.path.join(inc, "Python.h")))')"
    if ! command -v cc >/dev/null || [ "$has_headers" != "True" ]; then
        apt_install gcc python3-dev
    fi
}

# ensure_venv EXTRAS: create .venv if missing and pip install -e ".EXTRAS" into it.
ensure_venv() {
    local spec="$REPO_ROOT$1"
    if ! command -v python3 >/dev/null; then
        apt_install python3 python3-venv
    fi
    if ! "$VENV/bin/python" -c '' 2>/dev/null; then
        log "creating $VENV"
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV"; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    ensure_compiler
    log "pip install -e $spec"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" </dev/null
}

# ensure_pgpool2_sample: export PGPOOL2_SAMPLE, Debian's stock pgpool.conf, which the tests load
# as a pgpool-II user's first file.  When package pgpool2 is not installed, its .deb is
# downloaded with apt-get and unpacked into the venv, never installed: its server must not
# start.  Without apt the tests that need the file skip.
ensure_pgpool2_sample() {
    local sample=/usr/share/doc/pgpool2/examples/pgpool.conf.sample
    local unpacked="$VENV/pgpool2"
    if [ -f "$sample" ]; then
        export PGPOOL2_SAMPLE="$sample"
        return 0
    fi
    if [ ! -f "$unpacked$sample" ] && command -v apt-get >/dev/null; then
        local download
        download="$(mktemp -d)"
        log "apt-get download pgpool2 (unpacked into $unpacked, not installed)"
        if ! (cd "$download" && apt-get download -q pgpool2 </dev/null); then
            if [ "$(id -u)" = 0 ] && [ -z "$_APT_UPDATED" ]; then
                apt-get update -q </dev/null && _APT_UPDATED=1
                (cd "$download" && apt-get download -q pgpool2 </dev/null) || true
            fi
        fi
        if ls "$download"/pgpool2_*.deb >/dev/null 2>&1; then
            mkdir -p "$unpacked"
            dpkg-deb -x "$download"/pgpool2_*.deb "$unpacked"
        fi
        rm -rf "$download"
    fi
    if [ -f "$unpacked$sample" ]; then
        export PGPOOL2_SAMPLE="$unpacked$sample"
    else
        log "no pgpool2 sample: the tests that load Debian's pgpool.conf will skip"
    fi
}

# ensure_pcp_tools: put pgpool-II's pcp_* programs (Debian packages pgpool2 and libpgpool2)
# on PATH for tests/integration/test_pcp.py.  When they are not installed, both .debs are
# downloaded with apt-get and unpacked into the venv, never installed (pgpool2's server must
# not start); PATH and LD_LIBRARY_PATH then point there.  Without apt the PCP tests skip.
ensure_pcp_tools() {
    if command -v pcp_node_count >/dev/null || [ -x /usr/sbin/pcp_node_count ]; then
        export PATH="$PATH:/usr/sbin"
        return 0
    fi
    local unpacked="$VENV/pgpool2"
    if [ ! -x "$unpacked/usr/sbin/pcp_node_count" ] || ! ls "$unpacked"/usr/lib/libpcp.so* >/dev/null 2>&1; then
        if command -v apt-get >/dev/null; then
            local download
            download="$(mktemp -d)"
            log "apt-get download pgpool2 libpgpool2 (unpacked into $unpacked, not installed)"
            if ! (cd "$download" && apt-get download -q pgpool2 libpgpool2 </dev/null); then
                if [ "$(id -u)" = 0 ] && [ -z "$_APT_UPDATED" ]; then
                    apt-get update -q </dev/null && _APT_UPDATED=1
                    (cd "$download" && apt-get download -q pgpool2 libpgpool2 </dev/null) || true
                fi
            fi
            local deb
            for deb in "$download"/*.deb; do
                [ -f "$deb" ] || continue
                mkdir -p "$unpacked"
                dpkg-deb -x "$deb" "$unpacked"
            done
            rm -rf "$download"
        fi
    fi
    if [ -x "$unpacked/usr/sbin/pcp_node_count" ]; then
        export PATH="$PATH:$unpacked/usr/sbin"
        export LD_LIBRARY_PATH="$unpacked/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        log "no pcp_* programs (package pgpool2): the PCP tests will skip"
    fi
}

# ensure_jdbc_jar: the PostgreSQL JDBC driver (Debian package libpostgresql-jdbc-java,
# /usr/share/java/postgresql.jar) for the JDBC tests in tests/e2e/test_transaction_drivers.py.
# Optional: without root or apt the jar is not installed and those tests skip, as they do
# without java and javac, which this does not install.
ensure_jdbc_jar() {
    if [ -f /usr/share/java/postgresql.jar ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt_install libpostgresql-jdbc-java || log "libpostgresql-jdbc-java not installed: the JDBC tests will skip"
    else
        log "no /usr/share/java/postgresql.jar (sudo apt-get install libpostgresql-jdbc-java): the JDBC tests will skip"
    fi
}
