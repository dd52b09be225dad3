#!/usr/bin/env bash
# The layers side by side under the same load, in one run: starts a redis-server and the
# bench app of examples/load.rs (`load serve`: one axum server, one route per stack, see
# the table in its docs), drives each route with wrk, one after the other, with the same
# connections, duration and request shape, and prints requests/s, p50, p99 and the
# ratios to bare axum.
#
# Rows: bare axum; a hand-written jsonwebtoken::decode middleware; JwtAuthLayer;
# + the revocation check; + SessionLayer read; SessionLayer read and write alone;
# IdempotencyLayer first call; tower-sessions (tower-sessions-redis-store) read and write.
# On Redis also: the revocation check served by a LocalCache, with a session read from
# the store or, with SessionLayer::cached_reads, from the LocalCache; and that cached
# session read alone.
# The read and write rows spread the requests over the bench app's sessions (64 of each
# kind); the "one hot session" rows send every request of every connection with the same
# session cookie, so that all connections write to one session at once.
# No row has a rate limit, and any answer that is not 2xx/3xx (a 429, a 503) or a socket
# error marks its row and fails the run: the figures are then not the layers' cost.
#
# Environment: BENCH_POOL=N gives our RedisStore N pooled connections (default: the
# crate's default, one; tower-sessions' fred pool here has 4), for an A/B of the pool size.
#
# Run with: benches/compare.sh [--seconds S] [--warmup S] [--connections C] [--threads T]
#                              [--memory] [--rows REGEX] [--rounds N]
# Defaults: 10 s per row after a 2 s warm-up, 32 connections, 1 wrk thread (wrk -t1 -c32),
# on Redis (--memory: the in-memory stores instead, no Redis needed), one round. --rows
# runs only the rows whose path matches the extended regex (and the bare row, the ratios'
# base). --rounds N runs every row N times, round after round (so that a slow minute of
# the machine falls on every row alike), and prints each row's median and each ratio as
# the median of its N same-round ratios with the lowest and highest.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

seconds=10 warmup=2 connections=32 threads=1 memory=0 only="" rounds=1
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --memory) memory=1; shift ;;
    --rows) only=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
    esac
done

need cargo "install Rust (rustup)"
need wrk "apt-get install wrk (Debian, Ubuntu), brew install wrk (macOS)"
[ "$memory" = 1 ] || need redis-server "apt-get install redis-server (Debian, Ubuntu), or run with --memory"

cargo build --release --all-features --example load

out=$(mktemp -d)
trap 'cleanup; rm -rf "$out"' EXIT

serve_args=(serve --out "$out")
if [ "$memory" = 1 ]; then
    store="in memory"
else
    start_redis
    store="Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$redis_port"
    serve_args+=(--redis "redis://127.0.0.1:$redis_port")
fi
"$release/examples/load" "${serve_args[@]}" 2>"$out/serve.log" &
pids+=($!)
for _ in $(seq 600); do [ -s "$out/port" ] && break; sleep 0.05; done
if [ ! -s "$out/port" ]; then
    echo "the bench app did not start:" >&2
    cat "$out/serve.log" >&2
    exit 1
fi
base="http://127.0.0.1:$(cat "$out/port")"
# Every GET carries the bearer token and every session cookie (ours `id`, tower-sessions'
# `tid`, and on Redis the cached_reads layer's `cid`), so that the rows differ only in
# the stack.
cookie_files=("$out/ours.cookies" "$out/peer.cookies")
[ "$memory" = 1 ] || cookie_files+=("$out/cached.cookies")
paste -d';' "${cookie_files[@]}" | sed 's/;/; /g' >"$out/cookies"
# The hot-session rows: one line, so every request carries the same sessions.
head -n 1 "$out/cookies" >"$out/hot.cookies"
BENCH_BEARER=$(cat "$out/token")
export BENCH_BEARER BENCH_RUN="run$$-$RANDOM"

# name|path[|hot]: "hot" sends one session's cookies on every request. The rows whose
# throughputs make a ratio below run next to each other (our session write beside
# tower-sessions' write, ...; the cached rows one row from theirs, the rows divided by
# bare axum excepted), and every second round runs the list backwards (after bare axum,
# which always runs first, the base of the printed ratios): the two sides of a ratio run
# seconds apart, each first in half the rounds, so that the machine's drift over a run
# falls on both alike instead of on one.
rows=(
    "bare axum|/bare"
    "jsonwebtoken::decode middleware|/decode"
    "JwtAuthLayer|/jwt"
    "JWT + revocation|/jwt-revocation"
)
[ "$memory" = 0 ] && rows+=("JWT + cached revocation|/jwt-revocation-cached")
rows+=("JWT + revocation + session read|/jwt-revocation-session")
if [ "$memory" = 0 ]; then
    rows+=(
        "JWT + cached revocation + session read|/jwt-revocation-cached-session"
        "JWT + cached revocation + cached session read|/jwt-revocation-session-cached"
    )
fi
rows+=(
    "session read|/session-read"
    "tower-sessions read|/peer-read"
)
[ "$memory" = 0 ] && rows+=("SessionLayer read, cached (LocalCache)|/session-read-cached")
rows+=(
    "session write|/session-write"
    "tower-sessions write|/peer-write"
    "session write, one hot session|/session-write|hot"
    "tower-sessions write, one hot session|/peer-write|hot"
    "idempotency first call (POST)|/idempotent"
)

echo "== $(nproc) cores, $store; wrk -t$threads -c$connections, ${warmup} s warm-up + ${seconds} s per row, $rounds round(s)"
# rps/p50/p99 of row key K in round R are stored under "K@R".
declare -A rps p50 p99
keys=()
failed=0
for round in $(seq "$rounds"); do
    if [ "$rounds" -gt 1 ]; then echo "-- round $round of $rounds"; fi
    printf '%-46s %10s %9s %9s %8s\n' "stack" "req/s" "p50 ms" "p99 ms" "÷ bare"
    # Bare axum first in every round: each row's ratio to it is printed as the row ends.
    order=("${rows[@]}")
    if [ $((round % 2)) = 0 ]; then
        order=("${rows[0]}")
        for ((i = ${#rows[@]} - 1; i > 0; i--)); do order+=("${rows[i]}"); done
    fi
    for row in "${order[@]}"; do
        IFS='|' read -r name path kind <<<"$row"
        if [ -n "$only" ] && [ "$path" != /bare ] && ! [[ $path =~ $only ]]; then continue; fi
        post=0
        [ "$path" = /idempotent ] && post=1
        key=$path
        export BENCH_COOKIES="$out/cookies"
        if [ "$kind" = hot ]; then
            key="$path#hot"
            export BENCH_COOKIES="$out/hot.cookies"
        fi
        [ "$round" = 1 ] && keys+=("$key|$name")
        # Each wrk run numbers its idempotency keys from 1: the warm-up and every round
        # get a tag of their own, or a measured run would replay earlier keys.
        BENCH_RUN="$BENCH_RUN-$round-warm" BENCH_POST=$post wrk -t"$threads" -c"$connections" \
            -d"${warmup}s" -s benches/compare.lua "$base$path" >/dev/null
        result=$(BENCH_RUN="$BENCH_RUN-$round" BENCH_POST=$post wrk -t"$threads" \
            -c"$connections" -d"${seconds}s" -s benches/compare.lua "$base$path" | grep '^RESULT ')
        read -r _ requests duration lat50 lat99 bad_status socket_errors <<<"$result"
        k="$key@$round"
        rps[$k]=$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
        p50[$k]=$lat50 p99[$k]=$lat99
        note=""
        if [ "$bad_status" -gt 0 ] || [ "$socket_errors" -gt 0 ]; then
            note="  ! $bad_status answers not 2xx/3xx, $socket_errors socket errors"
            failed=1
        fi
        printf '%-46s %10s %9.2f %9.2f %7.2fx%s\n' "$name" "${rps[$k]}" \
            "$(awk -v v="$lat50" 'BEGIN { print v / 1000 }')" \
            "$(awk -v v="$lat99" 'BEGIN { print v / 1000 }')" \
            "$(awk -v a="${rps[$k]}" -v b="${rps[/bare@$round]}" 'BEGIN { print a / b }')" "$note"
    done
done

# median <numbers...>: the middle one (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) printf "%.4f", v[(NR + 1) / 2]; else printf "%.4f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# ratio A B: the median over the rounds of A's req/s ÷ B's in the same round, with the
# lowest and highest of those ratios when there is more than one round.
ratio() {
    local r values=()
    for r in $(seq "$rounds"); do
        if [ -z "${rps[$1@$r]:-}" ] || [ -z "${rps[$2@$r]:-}" ]; then echo "-"; return; fi
        values+=("$(awk -v a="${rps[$1@$r]}" -v b="${rps[$2@$r]}" 'BEGIN { print a / b }')")
    done
    local sorted
    sorted=$(printf '%s\n' "${values[@]}" | sort -g)
    if [ "$rounds" -gt 1 ]; then
        printf '%.2f  (%.2f–%.2f)\n' "$(median "${values[@]}")" "$(head -n1 <<<"$sorted")" \
            "$(tail -n1 <<<"$sorted")"
    else
        printf '%.2f\n' "$(median "${values[@]}")"
    fi
}
# of <array name> <row key>: the median over the rounds.
of() {
    local -n table=$1
    local r values=()
    for r in $(seq "$rounds"); do values+=("${table[$2@$r]}"); done
    median "${values[@]}"
}

if [ "$rounds" -gt 1 ]; then
    echo
    echo "Medians over the $rounds rounds (÷ bare: the median of the per-round ratios):"
    printf '%-46s %10s %9s %9s %8s\n' "stack" "req/s" "p50 ms" "p99 ms" "÷ bare"
    for entry in "${keys[@]}"; do
        IFS='|' read -r key name <<<"$entry"
        printf '%-46s %10.0f %9.2f %9.2f %8s\n' "$name" "$(of rps "$key")" \
            "$(awk -v v="$(of p50 "$key")" 'BEGIN { print v / 1000 }')" \
            "$(awk -v v="$(of p99 "$key")" 'BEGIN { print v / 1000 }')" \
            "$(ratio "$key" /bare | cut -d' ' -f1)x"
    done
fi
echo
echo "Throughput ratios (same run$([ "$rounds" -gt 1 ] && echo "; median of the $rounds rounds' ratios, lowest–highest")):"
echo "  JwtAuthLayer ÷ jsonwebtoken::decode middleware   $(ratio /jwt /decode)"
echo "  JWT + revocation ÷ JwtAuthLayer                   $(ratio /jwt-revocation /jwt)"
echo "  JWT + revocation + session read ÷ bare axum       $(ratio /jwt-revocation-session /bare)"
echo "  session read ÷ tower-sessions read                $(ratio /session-read /peer-read)"
echo "  session write ÷ tower-sessions write              $(ratio /session-write /peer-write)"
echo "  session write, one hot session ÷ tower-sessions   $(ratio '/session-write#hot' '/peer-write#hot')"
if [ "$memory" = 0 ]; then
    echo "  JWT + cached revocation ÷ JwtAuthLayer            $(ratio /jwt-revocation-cached /jwt)"
    echo "  JWT + cached revocation + session read ÷ bare     $(ratio /jwt-revocation-cached-session /bare)"
    echo "  JWT + cached revocation + cached session ÷ bare   $(ratio /jwt-revocation-session-cached /bare)"
    echo "  session read, cached ÷ session read               $(ratio /session-read-cached /session-read)"
fi
if [ "$failed" = 1 ]; then
    echo "some rows had failed requests (marked !): their figures are not the layers' cost" >&2
    exit 1
fi
