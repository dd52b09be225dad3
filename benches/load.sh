#!/usr/bin/env bash
# Load test of the example API: starts one redis-server and three instances of
# examples/stateless_api sharing it (free loopback ports, one JWT secret), runs
# examples/load.rs against one instance and then against all three, and stops every
# process it started on exit.
#
# The example limits every user to RATE_LIMIT_PER_MINUTE requests (at most one per
# millisecond, however high it is set): one user would turn the run into 429s. So the
# instances get 32 demo users and the highest limit, and the generator spreads its
# requests over the 32 users' tokens; any answer that is not 2xx fails the run.
#
# Run with: benches/load.sh [--requests N] [--seconds S] [--concurrency C]
# (options go to examples/load.rs; defaults: 20000 requests, 20 s, 32 concurrent)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

need cargo "install Rust (rustup)"
need redis-server "apt-get install redis-server (Debian, Ubuntu) or your system's package"

cargo build --release --all-features --example stateless_api --example load

users=$(for i in $(seq 32); do printf 'load%s:pw%s,' "$i" "$i"; done)
users=${users%,}

start_redis

urls=()
tries=0
while [ ${#urls[@]} -lt 3 ]; do
    tries=$((tries + 1))
    if [ $tries -gt 10 ]; then echo "could not start three instances" >&2; exit 1; fi
    port=$(free_port)
    REDIS_URL="redis://127.0.0.1:$redis_port" \
        JWT_SECRET="load-test-secret-load-test-secret-0123" \
        DEMO_USERS="$users" RATE_LIMIT_PER_MINUTE=60000 \
        PORT="$port" RUST_LOG=warn \
        "$release/examples/stateless_api" >/dev/null &
    pids+=($!)
    # Another process may take the port first (the instance then exits): try another.
    if wait_for "$port" $!; then urls+=("http://127.0.0.1:$port"); fi
done

# What a reader of the figures needs to know: when, on what, and how busy it was.
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -1)), $(redis-server --version | sed 's/.*v=\([^ ]*\).*/Redis \1/'), load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
echo "== 1 instance"
"$release/examples/load" --users "$users" "$@" "${urls[0]}"
echo "== 3 instances"
"$release/examples/load" --users "$users" "$@" "${urls[@]}"
