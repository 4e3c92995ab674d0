# shellcheck shell=bash
# Shared by scripts/demo and scripts/demo-registry: PostgreSQL nodes run by
# the postgres user in a temporary directory, on Unix sockets only, and the
# helpers the demos query and print with.  Sourced after scripts/common.sh,
# not run.

nodes=()
declare -A port
dir=
demo_pids=()

# demo_dir PREFIX: make $dir, owned by the postgres user, and arrange for
# everything to be stopped and removed at exit.
demo_dir() {
    dir=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$dir"
    chown postgres: "$dir"
    trap cleanup EXIT
}

# At exit: the background processes the demo registered in demo_pids, then
# the nodes, then the directory.
cleanup() {
    local pid n
    for pid in "${demo_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for n in "${nodes[@]}"; do
        [ -f "$dir/$n/postmaster.pid" ] &&
            as_postgres "$PG_BINDIR/pg_ctl -D '$dir/$n' -m immediate stop" >/dev/null 2>&1
    done
    for pid in "${demo_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
}

free_port() {
    local p=$1
    while (echo >/dev/tcp/127.0.0.1/"$p") 2>/dev/null || [ -e "$dir/.s.PGSQL.$p" ]; do
        p=$((p + 1))
    done
    echo "$p"
}

# init_nodes [SETTING...]: initdb every node of $nodes, give it a free port,
# registry in shared_preload_libraries, its name as registry.node_name and
# the extra postgresql.conf lines given, start it and print its port.
init_nodes() {
    local p=5480 n
    for n in "${nodes[@]}"; do
        p=$(free_port $p)
        port[$n]=$p
        p=$((p + 1))
        as_postgres "$PG_BINDIR/initdb -D '$dir/$n' -A trust >/dev/null"
        {
            cat <<EOF
port = ${port[$n]}
listen_addresses = ''
unix_socket_directories = '$dir'
shared_preload_libraries = 'registry'
registry.node_name = '$n'
EOF
            [ $# -eq 0 ] || printf '%s\n' "$@"
        } >>"$dir/$n/postgresql.conf"
        start_node "$n"
        echo "  $n: port ${port[$n]}"
    done
}

start_node() {
    as_postgres "$PG_BINDIR/pg_ctl -D '$dir/$1' -l '$dir/$1.log' -w start >/dev/null"
}

# stop_node NODE MODE: pg_ctl stop -m MODE (fast, immediate, ...).
stop_node() {
    as_postgres "$PG_BINDIR/pg_ctl -D '$dir/$1' -m $2 -w stop >/dev/null"
}

# q NODE [psql options...] SQL: run SQL on a node as the postgres user.
q() {
    local n=$1
    shift
    local sql=${*: -1}
    local opts=("${@:1:$#-1}")
    printf '%s\n' "$sql" |
        as_postgres "$PG_BINDIR/psql -X -q -v ON_ERROR_STOP=1 -h '$dir' -p ${port[$n]} -d postgres ${opts[*]}"
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
explain() { printf '%s\n' "$*" | fold -s -w 78; }
