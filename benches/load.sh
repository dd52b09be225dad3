#!/usr/bin/env bash
# Load test of the example API: starts one redis-server and three instances of
# examples/stateless_api sharing it (free loopback ports, one JWT secret), runs
# examples/load.rs against one instance and then against all three, and stops every
# process it started on exit.
#
# Run with: benches/load.sh [--requests N] [--seconds S] [--concurrency C]
# (options go to examples/load.rs; defaults: 20000 requests, 20 s, 32 concurrent)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --all-features --example stateless_api --example load

pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

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

wait_for() { # port
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on $1" >&2
    return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
wait_for "$redis_port"

urls=()
for _ in 1 2 3; do
    port=$(free_port)
    REDIS_URL="redis://127.0.0.1:$redis_port" \
        JWT_SECRET="load-test-secret-load-test-secret-0123" \
        PORT="$port" RUST_LOG=warn \
        target/release/examples/stateless_api >/dev/null &
    pids+=($!)
    wait_for "$port"
    urls+=("http://127.0.0.1:$port")
done

echo "== 1 instance"
target/release/examples/load "$@" "${urls[0]}"
echo "== 3 instances"
target/release/examples/load "$@" "${urls[@]}"
