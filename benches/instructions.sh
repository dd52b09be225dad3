#!/usr/bin/env bash
# CPU instructions per request, app and Redis, for the rows of benches/compare.sh: a
# count that does not move with the machine's speed or with what else it runs (valgrind's
# callgrind counts instructions executed in user space; the same binary, inputs and
# batching give the same count within about 1 %), where req/s on a shared 2-core machine
# moves by a fifth within a minute.
#
# For each path, two runs of the bench app of examples/load.rs (`load serve`) on a fresh
# redis-server, driven by wrk (-t1 -c8, the request shape of benches/compare.lua): one
# with the app under callgrind, one with redis-server under callgrind. Instrumentation is
# switched on after a warm-up (callgrind_control -i on) and off at the end of the
# measured run, so start-up and set-up are not counted; the count is divided by the
# requests wrk completed.
#
# What the count leaves out: system calls and time in the kernel (a design that batches
# replies into fewer writes, or needs fewer round trips, is faster than its instruction
# count says), and wrk's own work. Under callgrind the measured process runs about 50
# times slower, so the other side batches more requests per read than at full speed:
# compare rows measured the same way, not these counts with req/s.
#
# Run with: benches/instructions.sh [--seconds S] [--keep DIR] [PATH...]
# --keep DIR keeps each run's callgrind profile as DIR/<path>.<app|redis>.cg, for
# `callgrind_annotate` (where the instructions go, function by function).
# Default paths: /bare /session-read /peer-read /session-write /peer-write (see the route
# table in examples/load.rs); 5 s measured per run after a 2 s warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

seconds=5
keep=
paths=()
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --keep) # relative to where the script was started (it runs from the repository root)
        keep=$2; [ "${keep#/}" != "$keep" ] || keep="$OLDPWD/$keep"; mkdir -p "$keep"; shift 2 ;;
    -*) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
    *) paths+=("$1"); shift ;;
    esac
done
[ ${#paths[@]} -gt 0 ] || paths=(/bare /session-read /peer-read /session-write /peer-write)

need cargo "install Rust (rustup)"
need wrk "apt-get install wrk (Debian, Ubuntu), brew install wrk (macOS)"
need redis-server "apt-get install redis-server (Debian, Ubuntu)"
need valgrind "apt-get install valgrind (Debian, Ubuntu)"
need callgrind_control "apt-get install valgrind (Debian, Ubuntu)"

cargo build --release --all-features --example load
app="$release/examples/load"

# measure <path> <app|redis>: prints "<requests> <instructions>" for the side under
# callgrind. Every run starts its own redis-server and app, and stops them.
measure() {
    local path=$1 side=$2 out vpid port_file
    out=$(mktemp -d)
    pids=()
    local grind=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg")
    redis_port=$(free_port)
    local redis=(redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no)
    if [ "$side" = redis ]; then
        "${grind[@]}" "${redis[@]}" >/dev/null 2>&1 &
        vpid=$!
    else
        "${redis[@]}" >/dev/null &
    fi
    pids+=($!)
    wait_for "$redis_port" $!
    local serve=("$app" serve --out "$out" --redis "redis://127.0.0.1:$redis_port")
    if [ "$side" = app ]; then
        "${grind[@]}" "${serve[@]}" 2>"$out/serve.log" &
        vpid=$!
    else
        "${serve[@]}" 2>"$out/serve.log" &
    fi
    pids+=($!)
    port_file="$out/port"
    for _ in $(seq 1200); do [ -s "$port_file" ] && break; sleep 0.1; done
    if [ ! -s "$port_file" ]; then
        echo "the bench app did not start:" >&2
        cat "$out/serve.log" >&2
        exit 1
    fi
    local base="http://127.0.0.1:$(cat "$port_file")"
    paste -d';' "$out/ours.cookies" "$out/peer.cookies" "$out/cached.cookies" |
        sed 's/;/; /g' >"$out/cookies"
    local post=0
    [ "$path" = /idempotent ] && post=1
    export BENCH_BEARER BENCH_COOKIES="$out/cookies" BENCH_POST=$post
    BENCH_BEARER=$(cat "$out/token")
    BENCH_RUN="warm$$-$RANDOM" wrk -t1 -c8 -d2s -s benches/compare.lua "$base$path" >/dev/null
    callgrind_control -i on "$vpid" >/dev/null 2>&1
    local result
    result=$(BENCH_RUN="run$$-$RANDOM" wrk -t1 -c8 -d"${seconds}s" -s benches/compare.lua \
        "$base$path" | grep '^RESULT ')
    callgrind_control -i off "$vpid" >/dev/null 2>&1
    callgrind_control -d "$vpid" >/dev/null 2>&1
    for _ in $(seq 100); do [ -s "$out/cg.1" ] && break; sleep 0.1; done
    local requests bad socket_errors total
    read -r _ requests _ _ _ bad socket_errors <<<"$result"
    if [ "$bad" -gt 0 ] || [ "$socket_errors" -gt 0 ]; then
        echo "$path: $bad answers not 2xx/3xx, $socket_errors socket errors" >&2
        exit 1
    fi
    total=$(callgrind_annotate "$out/cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
    [ -z "$keep" ] || cp "$out/cg.1" "$keep/$(echo "${path#/}" | tr / _).$side.cg"
    cleanup
    rm -rf "$out"
    echo "$requests $total"
}

echo "== instructions per request (callgrind), wrk -t1 -c8, ${seconds} s per run, $(redis-server --version | sed 's/.*v=\([^ ]*\).*/Redis \1/')"
printf '%-16s %12s %12s %12s\n' path app redis total
for path in "${paths[@]}"; do
    app_side=$(measure "$path" app) || exit 1
    redis_side=$(measure "$path" redis) || exit 1
    read -r app_requests app_total <<<"$app_side"
    read -r redis_requests redis_total <<<"$redis_side"
    awk -v p="$path" -v ar="$app_requests" -v at="$app_total" -v rr="$redis_requests" \
        -v rt="$redis_total" 'BEGIN { a = at / ar; r = rt / rr
            printf "%-16s %12.0f %12.0f %12.0f\n", p, a, r, a + r }'
done
