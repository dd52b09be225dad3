# Shared by the scripts of benches/ (sourced, not run): tool checks, free
# loopback ports, a throwaway redis-server, and cleanup of every process started.

# Where cargo puts what it builds (`CARGO_TARGET_DIR` when set, as cargo itself does).
release="${CARGO_TARGET_DIR:-target}/release"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

# need <command> <how to install it>
need() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "$1 is missing: $2" >&2
        exit 1
    fi
}

free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

wait_for() { # port [pid of the process that should listen]
    for _ in $(seq 400); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
        sleep 0.05
    done
    echo "nothing listening on $1" >&2
    return 1
}

# Starts a redis-server without persistence on a free port; sets redis_port.
start_redis() {
    for _ in 1 2 3 4 5; do # another process may take the port first
        redis_port=$(free_port)
        redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
        pids+=($!)
        if wait_for "$redis_port" $!; then return 0; fi
    done
    echo "could not start redis-server" >&2
    return 1
}
