# shellcheck shell=bash
# Helpers for the benchmarks in bench/: build the extension, run one
# throw-away PostgreSQL instance as the postgres OS user (or several, one
# per node), run pgbench, and the little statistics the reports need.
# Sourced, not run.
#
# Reuses scripts/common.sh for PG_BINDIR, PG_CONFIG, say and ensure_root.

BENCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$BENCH_REPO/scripts/common.sh"

# Set by bench_instance_start, read by bench_cleanup.
BENCH_DIR=""        # temp directory: data/, socket, logs, pgbench scripts
BENCH_STARTED=0
BENCH_COMMIT=""      # set by bench_build
export BENCH_DIR

# Build and install the extension.  Plain make (no clean, no -Werror):
# an up-to-date tree costs nothing, and this is a benchmark, not a lint.
bench_build() {
    local need_deps=""
    [ -x "$PG_CONFIG" ] || need_deps=1
    [ -n "$need_deps" ] || [ -f "$("$PG_CONFIG" --pgxs 2>/dev/null)" ] || need_deps=1
    command -v gcc >/dev/null 2>&1 || need_deps=1
    command -v make >/dev/null 2>&1 || need_deps=1
    [ -x "$PG_BINDIR/pgbench" ] || need_deps=1
    id postgres >/dev/null 2>&1 || need_deps=1
    if [ -n "$need_deps" ]; then
        echo "build dependencies for PostgreSQL $PG_MAJOR are missing;" \
             "run ./scripts/test first (it installs them)" >&2
        exit 1
    fi
    say "building and installing the registry extension"
    # The commit is recorded now, at build time: it is what gets measured,
    # even if the tree moves on while the benchmark runs.
    BENCH_COMMIT=$(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$BENCH_REPO" diff --quiet HEAD 2>/dev/null ||
        BENCH_COMMIT+=" (with uncommitted changes)"
    if ! make -s -C "$BENCH_REPO" PG_CONFIG="$PG_CONFIG" ||
       ! make -s -C "$BENCH_REPO" PG_CONFIG="$PG_CONFIG" install >/dev/null; then
        echo "build failed; if a dependency is missing, run ./scripts/test first" >&2
        exit 1
    fi
}

# Run the instances from a private copy of PostgreSQL's binaries, libraries
# and shared files, with the extension just built installed into it: on a
# machine where other checkouts build and `make install` while this runs,
# the instances then load this build, whatever is installed meanwhile.
# PostgreSQL finds its lib and share directories relative to its binaries,
# as in `make check`'s temporary installation.  Call after bench_build,
# with BENCH_DIR made (the copy, about 50 MB, goes into BENCH_DIR/pg);
# sets PG_BINDIR.
bench_private_install() {
    local root=$BENCH_DIR/pg d
    for d in "$(dirname "$("$PG_CONFIG" --bindir)")" "$("$PG_CONFIG" --sharedir)"; do
        mkdir -p "$root$(dirname "$d")"
        cp -a "$d" "$root$(dirname "$d")/"
    done
    make -s -C "$BENCH_REPO" PG_CONFIG="$PG_CONFIG" DESTDIR="$root" install >/dev/null
    PG_BINDIR=$root$("$PG_CONFIG" --bindir)
}

# Run a command as postgres, in BENCH_DIR (postgres cannot necessarily
# read root's working directory), with arguments passed through intact
# (no re-quoting through a shell string; "--" keeps su from taking
# options such as -D meant for the command).  The environment (PGHOST,
# PGPORT, ...) is kept: su without "-" does not reset it.
as_pg() {
    # shellcheck disable=SC2016  # expanded by the inner shell, on purpose
    su postgres -s /bin/bash -c 'cd "$BENCH_DIR" && exec "$0" "$@"' -- "$@"
}

# psql against the bench instance: quiet, stop at the first error,
# unaligned tuples-only output, so results can be captured directly.
bench_psql() {
    as_pg "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -At -d postgres "$@"
}

# A TCP port nobody listens on.  The instance listens only on its unix
# socket in BENCH_DIR, so a clash would be harmless, but a free port
# keeps its log and socket name unambiguous.
bench_free_port() {
    local p
    for p in $(seq 54320 54420); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port in 54320-54420" >&2
    return 1
}

# Create, configure and start a fresh instance in a new temp directory.
# Extra postgresql.conf lines may be given as arguments.
bench_instance_start() {
    BENCH_DIR=$(mktemp -d /tmp/registry-bench.XXXXXX)
    chmod 755 "$BENCH_DIR"
    chown postgres: "$BENCH_DIR"
    export PGHOST=$BENCH_DIR
    PGPORT=$(bench_free_port)
    export PGPORT

    as_pg "$PG_BINDIR/initdb" -D "$BENCH_DIR/data" -U postgres -A trust \
        --no-sync >"$BENCH_DIR/initdb.log" 2>&1 ||
        { cat "$BENCH_DIR/initdb.log" >&2; return 1; }
    {
        echo "# bench instance: default durability (fsync, synchronous_commit on)"
        echo "port = $PGPORT"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$BENCH_DIR'"
        local line
        for line in "$@"; do echo "$line"; done
    } >>"$BENCH_DIR/data/postgresql.conf"

    as_pg "$PG_BINDIR/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" \
        -w -t 60 start >/dev/null ||
        { tail -n 40 "$BENCH_DIR/server.log" >&2; return 1; }
    BENCH_STARTED=1
}

# Stop the instance (fast, then immediate if that hangs) and remove the
# temp directory.  Safe to call more than once and from a trap.
bench_cleanup() {
    if [ "$BENCH_STARTED" = 1 ]; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$BENCH_DIR/data" -m fast -w -t 30 stop \
            >/dev/null 2>&1 ||
            as_pg "$PG_BINDIR/pg_ctl" -D "$BENCH_DIR/data" -m immediate -w stop \
                >/dev/null 2>&1 || true
        BENCH_STARTED=0
    fi
    if [ -n "$BENCH_DIR" ] && [ -d "$BENCH_DIR" ]; then
        rm -rf "$BENCH_DIR"
    fi
    BENCH_DIR=""
}

# bench_pgbench CLIENTS SECONDS SCRIPT: run pgbench, print its tps
# (excluding connection time).  Any failed transaction or aborted
# client fails the run: a benchmark of errors is worthless.
bench_pgbench() {
    local clients=$1 seconds=$2 script=$3 out tps
    if ! out=$(as_pg "$PG_BINDIR/pgbench" -n -c "$clients" -j "$clients" \
                   -T "$seconds" -f "$script" postgres 2>&1); then
        printf 'pgbench failed (%s, %s clients):\n%s\n' "$script" "$clients" "$out" >&2
        return 1
    fi
    if grep -q '^number of failed transactions: [1-9]' <<<"$out"; then
        printf 'pgbench had failed transactions (%s):\n%s\n' "$script" "$out" >&2
        return 1
    fi
    tps=$(awk '/^tps = / { print $3; exit }' <<<"$out")
    if [ -z "$tps" ]; then
        printf 'no tps in pgbench output:\n%s\n' "$out" >&2
        return 1
    fi
    echo "$tps"
}

# Statistics over whitespace-separated numbers given as arguments.
bench_median() {
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
bench_min() { printf '%s\n' "$@" | sort -g | head -n 1; }
bench_max() { printf '%s\n' "$@" | sort -g | tail -n 1; }

# Machine and version facts for a report.
bench_environment() {
    local cpu
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "date:       $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit:     ${BENCH_COMMIT:-unknown} (at build time)"
    echo "postgresql: $(bench_psql -c 'SHOW server_version')"
    echo "cpu:        ${cpu:-unknown} (nproc $(nproc))"
}

# ---------------------------------------------------------------------
# Several instances at once (bench/replication, bench/scale, bench/leases,
# bench/large).  The caller makes BENCH_DIR (owned by postgres, mode 755);
# node NAME's data directory is BENCH_DIR/NAME, its log BENCH_DIR/NAME.log,
# and every node listens only on a unix socket in BENCH_DIR, where its
# port is what tells it apart.
declare -A PORT=()  # node name -> port, set by start_node
NODES=()            # nodes started and not yet stopped, in start order

# A port for a new node: no TCP server listens on it, no socket for it in
# BENCH_DIR, and no other node was given it.
node_port() {
    local p n taken
    for p in $(seq 54330 54629); do
        taken=""
        for n in "${NODES[@]}"; do [ "${PORT[$n]}" = "$p" ] && taken=1; done
        [ -z "$taken" ] && [ ! -e "$BENCH_DIR/.s.PGSQL.$p" ] &&
            ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
            { echo "$p"; return 0; }
    done
    echo "no free port in 54330-54629" >&2
    return 1
}

# start_node NAME [postgresql.conf lines...]: create, configure and start
# a fresh instance at default durability (fsync, synchronous_commit on).
start_node() {
    local n=$1 port line
    shift
    port=$(node_port) || return 1
    PORT[$n]=$port
    as_pg "$PG_BINDIR/initdb" -D "$BENCH_DIR/$n" -U postgres -A trust --no-sync \
        >"$BENCH_DIR/$n.initdb.log" 2>&1 ||
        { cat "$BENCH_DIR/$n.initdb.log" >&2; return 1; }
    {
        echo "# bench instance: default durability (fsync, synchronous_commit on)"
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$BENCH_DIR'"
        for line in "$@"; do echo "$line"; done
    } >>"$BENCH_DIR/$n/postgresql.conf"
    NODES+=("$n")
    as_pg "$PG_BINDIR/pg_ctl" -D "$BENCH_DIR/$n" -l "$BENCH_DIR/$n.log" -w -t 60 start \
        >/dev/null || { tail -n 40 "$BENCH_DIR/$n.log" >&2; return 1; }
}

# stop_nodes immediate|fast: stop every node (immediate, or fast and then
# immediate if that hangs) and remove its data directory.  Safe from a
# trap.
stop_nodes() {
    local mode=${1:-immediate} n
    for n in "${NODES[@]}"; do
        if [ "$mode" = fast ]; then
            as_pg "$PG_BINDIR/pg_ctl" -D "$BENCH_DIR/$n" -m fast -w -t 30 stop \
                >/dev/null 2>&1 ||
                as_pg "$PG_BINDIR/pg_ctl" -D "$BENCH_DIR/$n" -m immediate -w stop \
                    >/dev/null 2>&1 || true
        else
            as_pg "$PG_BINDIR/pg_ctl" -D "$BENCH_DIR/$n" -m immediate -w stop \
                >/dev/null 2>&1 || true
        fi
        rm -rf "${BENCH_DIR:?}/$n"
        unset "PORT[$n]"
    done
    NODES=()
}

# The conninfo a node's peers use for it, and psql against a node (quiet,
# stop at the first error, unaligned tuples only): sqlon NAME SQL...
conninfo() { echo "host=$BENCH_DIR port=${PORT[$1]} dbname=postgres user=postgres"; }
sqlon() {
    local n=$1
    shift
    as_pg "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -At -h "$BENCH_DIR" -p "${PORT[$n]}" \
        -d postgres -c "$*"
}
now_ms() { date +%s%3N; }
