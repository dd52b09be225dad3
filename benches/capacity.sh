#!/usr/bin/env bash
# Capacity on paper, from measurements: what one request of each path costs Redis.
#
# Starts a redis-server and the bench app of examples/load.rs (`load serve`, the same app
# as benches/compare.sh), then per path: a warm-up, `CONFIG RESETSTAT`, a wrk run of
# --seconds, and Redis's own counters read back: `INFO commandstats` (calls and usec per
# command), `INFO stats` (total_net_input_bytes, total_net_output_bytes) and `INFO cpu`
# (used_cpu_user + used_cpu_sys of the redis-server process, before and after). Divided by
# the requests wrk completed, that prints per request:
#
#   sent          the commands a request sends (the round-trip contract)
#   cmd µs        Redis's time executing them: usec_per_call of each command sent
#                 (commandstats; an EVALSHA's usec includes the commands its script
#                 runs, which commandstats also counts on their own, listed last)
#   CPU µs        the redis-server process's CPU (user + sys: command execution plus
#                 network reads and writes, parsing, the event loop); what sizing needs
#   bytes in/out  bytes Redis read from and wrote to its clients
#
# and, from the CPU µs, the requests/s one Redis core carries at the --headroom share of
# it (default 70 %). CONFIG and INFO (this script's own) are left out of the counts.
#
# Paths: the revocation check (JWT + MGET) and the same served by LocalCache, session
# read and the same served by LocalCache (SessionLayer::cached_reads), session write,
# idempotent first call (a new key per request), idempotent replay (one key), rate-limit
# check (one GCRA step), and JWT + revocation + session read, from Redis and from
# LocalCache.
#
# Run with: benches/capacity.sh [--seconds S] [--warmup S] [--connections C]
#                               [--threads T] [--headroom PERCENT]
# Defaults: 5 s per path after a 1 s warm-up, wrk -t1 -c32, 70 % headroom.
# Needs cargo, wrk, redis-server and redis-cli on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

seconds=5 warmup=1 connections=32 threads=1 headroom=70
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --headroom) headroom=$2; shift 2 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
    esac
done

need cargo "install Rust (rustup)"
need wrk "apt-get install wrk (Debian, Ubuntu), brew install wrk (macOS)"
need redis-server "apt-get install redis-server (Debian, Ubuntu), brew install redis (macOS)"
need redis-cli "it comes with redis-server"

cargo build --release --all-features --example load

out=$(mktemp -d)
trap 'cleanup; rm -rf "$out"' EXIT

start_redis
rcli() { redis-cli -p "$redis_port" "$@"; }
"$release/examples/load" serve --out "$out" --redis "redis://127.0.0.1:$redis_port" \
    2>"$out/serve.log" &
pids+=($!)
for _ in $(seq 600); do [ -s "$out/port" ] && break; sleep 0.05; done
if [ ! -s "$out/port" ]; then
    echo "the bench app did not start:" >&2
    cat "$out/serve.log" >&2
    exit 1
fi
base="http://127.0.0.1:$(cat "$out/port")"
# Every request carries both of our session cookies: `id` and the cached_reads layer's `cid`.
paste -d';' "$out/ours.cookies" "$out/cached.cookies" | sed 's/;/; /' >"$out/cookies"
BENCH_BEARER=$(cat "$out/token")
export BENCH_BEARER BENCH_COOKIES="$out/cookies" BENCH_RUN="cap$$-$RANDOM"

# The redis-server's CPU seconds so far (user + sys).
redis_cpu() {
    rcli INFO cpu | tr -d '\r' | awk -F: '
        $1 == "used_cpu_user" || $1 == "used_cpu_sys" { s += $2 }
        END { printf "%.6f", s }'
}

# name | method | path | fixed idempotency key (replays) or empty | the commands the app
# sends per request (the round-trip contract, counted by tests/round_trips.rs)
rows=(
    "revocation check (JWT + MGET)|GET|/jwt-revocation||MGET"
    "revocation check, LocalCache warm|GET|/jwt-revocation-cached||"
    "session read|GET|/session-read||HGETALL"
    "session read, LocalCache warm|GET|/session-read-cached||"
    "session write|GET|/session-write||EVALSHA"
    "idempotent first call|POST|/idempotent||SET EVALSHA"
    "idempotent replay|POST|/idempotent|replay-$BENCH_RUN|SET"
    "rate-limit check|GET|/rate-limit||EVALSHA"
    "JWT + revocation + session read|GET|/jwt-revocation-session||MGET HGETALL"
    "JWT + revocation + session, LocalCache warm|GET|/jwt-revocation-session-cached||"
)

version=$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), Redis $version, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== wrk -t$threads -c$connections, ${warmup} s warm-up + ${seconds} s per path; capacity at ${headroom} % of one Redis core"
printf '%-44s %9s %7s %8s %8s %8s %9s %11s  %s\n' "path" "requests" "sent" "cmd µs" "CPU µs" "B in" "B out" "req/s/core" "Redis counted, per request"
failed=0
for row in "${rows[@]}"; do
    IFS='|' read -r name method path key sent <<<"$row"
    post=0
    [ "$method" = POST ] && post=1
    # Each wrk run numbers its keys from 1: a run tag of its own keeps first calls first.
    BENCH_RUN="$BENCH_RUN-warm" BENCH_POST=$post BENCH_KEY=$key wrk -t"$threads" \
        -c"$connections" -d"${warmup}s" -s benches/compare.lua "$base$path" >/dev/null
    sleep 0.2 # the warm-up's last requests finish
    rcli CONFIG RESETSTAT >/dev/null
    cpu_before=$(redis_cpu)
    result=$(BENCH_POST=$post BENCH_KEY=$key wrk -t"$threads" -c"$connections" \
        -d"${seconds}s" -s benches/compare.lua "$base$path" | grep '^RESULT ')
    sleep 0.2 # requests still in flight when wrk stopped finish before the counters are read
    stats=$(rcli INFO stats | tr -d '\r')
    commandstats=$(rcli INFO commandstats | tr -d '\r')
    cpu_after=$(redis_cpu)
    read -r _ requests _ _ _ bad_status socket_errors <<<"$result"
    note=""
    if [ "$bad_status" -gt 0 ] || [ "$socket_errors" -gt 0 ]; then
        note="  ! $bad_status answers not 2xx/3xx, $socket_errors socket errors"
        failed=1
    fi
    bytes_in=$(awk -F: '$1 == "total_net_input_bytes" { print $2 }' <<<"$stats")
    bytes_out=$(awk -F: '$1 == "total_net_output_bytes" { print $2 }' <<<"$stats")
    # cmdstat_get:calls=1,usec=2,usec_per_call=2.00,... (`config|resetstat`: a
    # subcommand). CONFIG and INFO are this script's own.
    awk -v n="$requests" -v cpu0="$cpu_before" -v cpu1="$cpu_after" -v bin="$bytes_in" \
        -v bout="$bytes_out" -v headroom="$headroom" -v name="$name" -v note="$note" \
        -v sent="$sent" '
        /^cmdstat_/ {
            split($0, kv, ":"); cmd = toupper(substr(kv[1], 9)); sub(/\|.*/, "", cmd)
            if (cmd == "CONFIG" || cmd == "INFO") next
            split(kv[2], f, ",")
            for (i in f) { split(f[i], p, "="); v[p[1]] = p[2] }
            calls[cmd] += v["calls"]; usec[cmd] += v["usec"]
        }
        END {
            # Redis time of the commands the app sends: their usec per call, once per
            # command sent (an EVALSHA includes what its script runs). The breakdown
            # lists every command Redis counted, those run inside scripts included.
            m = split(sent, s, " ")
            t = 0
            for (i = 1; i <= m; i++) t += (calls[s[i]] > 0 ? usec[s[i]] / calls[s[i]] : 0)
            list = ""
            for (c in calls)
                list = list sprintf("%s%s %.2f", (list == "" ? "" : ", "), c, calls[c] / n)
            cpu = (cpu1 - cpu0) * 1e6 / n
            printf "%-44s %9d %7d %8.2f %8.2f %8.1f %9.1f %11.0f  %s%s\n", name, n, m, t,
                cpu, bin / n, bout / n, (cpu > 0 ? headroom / 100 * 1e6 / cpu : 0),
                (list == "" ? "none" : list), note
        }' <<<"$commandstats"
done
echo
echo "cmd µs, CPU µs, bytes and the last column: per request (run totals ÷ requests wrk completed)."
echo "req/s/core: ${headroom} % of one second of Redis CPU ÷ CPU µs per request."
if [ "$failed" = 1 ]; then
    echo "some paths had failed requests (marked !): their figures are not the paths' cost" >&2
    exit 1
fi
