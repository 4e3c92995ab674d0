# Shared by scripts/demo, scripts/demo-registry and scripts/test: make sure
# this Debian machine can build the extension and run PostgreSQL as the
# postgres OS user.
# Sourced, not run.

PG_MAJOR=15
PG_BINDIR=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BINDIR/pg_config
export PG_CONFIG

say() { printf '\n== %s\n' "$*"; }

ensure_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "run this as root (it installs packages and runs servers as the postgres user)" >&2
        exit 1
    fi
}

# Install whatever is missing, and only that.
ensure_packages() {
    local want=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libpq-dev
                zlib1g-dev libipc-run-perl make gcc "$@")
    local missing=()
    local p
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
            missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${missing[@]}" ||
            { apt-get update -q && apt-get install -y -q "${missing[@]}"; }
    fi
    ensure_pgbouncer
    id postgres >/dev/null 2>&1 ||
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

# pgbouncer for t/035_pgbouncer.pl (t/Pooler.pm runs /usr/sbin/pgbouncer on
# a free port of its own).  Installed with services kept from starting (a
# policy-rc.d that refuses, only while apt runs, when there is none), and
# its system service disabled and stopped, so that no system pgbouncer
# holds port 6432 or runs at boot.
ensure_pgbouncer() {
    dpkg-query -W -f='${Status}' pgbouncer 2>/dev/null | grep -q "ok installed" && return 0
    say "installing pgbouncer (its system service stays stopped)"
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy && ours=1
    fi
    local rc=0
    apt-get install -y -q pgbouncer ||
        { apt-get update -q && apt-get install -y -q pgbouncer; } || rc=$?
    [ $ours = 1 ] && rm -f $policy
    [ $rc = 0 ] || return $rc
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now pgbouncer >/dev/null 2>&1 || true
    fi
    [ -x /usr/sbin/pgbouncer ] || { echo "pgbouncer installed but /usr/sbin/pgbouncer is missing" >&2; return 1; }
}

# Build (warnings are errors) and install into PostgreSQL $PG_MAJOR.
build_and_install() {
    say "building and installing the registry extension"
    make -s clean >/dev/null
    make -s PG_CONFIG="$PG_CONFIG" \
        PG_CFLAGS="-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Werror"
    make -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}

# A copy of the source tree the postgres user owns, for test output and
# server data directories.
postgres_workdir() {
    local dir
    dir=$(mktemp -d /tmp/registry.XXXXXX)
    chmod 755 "$dir"
    cp -a . "$dir/registry"
    chown -R postgres: "$dir"
    echo "$dir"
}

as_postgres() {
    su postgres -s /bin/bash -c "$*"
}
