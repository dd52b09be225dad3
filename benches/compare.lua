-- wrk script of benches/compare.sh: every row sends the same request shape, so that the
-- rows differ only in the stack behind the path.
--
--   BENCH_BEARER   bearer token, sent on every request
--   BENCH_COOKIES  file of Cookie header values, one per line, sent round-robin
--   BENCH_POST     "1": POST with a small JSON body and a new Idempotency-Key each time
--   BENCH_RUN      a tag that makes the run's idempotency keys unique
--   BENCH_KEY      with BENCH_POST: this one Idempotency-Key on every request (replays)
--
-- done() prints one line for the script:
--   RESULT <requests> <duration µs> <p50 µs> <p99 µs> <non-2xx/3xx answers> <socket errors>

local bearer = os.getenv("BENCH_BEARER")
local post = os.getenv("BENCH_POST") == "1"
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local fixed_key = os.getenv("BENCH_KEY")
if fixed_key == "" then
    fixed_key = nil
end
local cookies = {}
local cookie_file = os.getenv("BENCH_COOKIES")
if cookie_file and cookie_file ~= "" then
    for line in io.lines(cookie_file) do
        if line ~= "" then
            cookies[#cookies + 1] = line
        end
    end
end

local next_thread = 0
function setup(thread)
    next_thread = next_thread + 1
    thread:set("thread_id", next_thread)
end

local n = 0
function request()
    n = n + 1
    local headers = {}
    if bearer and bearer ~= "" then
        headers["Authorization"] = "Bearer " .. bearer
    end
    if #cookies > 0 then
        headers["Cookie"] = cookies[(n % #cookies) + 1]
    end
    if post then
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = fixed_key or (run .. "-" .. tostring(thread_id) .. "-" .. n)
        return wrk.format("POST", nil, headers, '{"n":1}')
    end
    return wrk.format("GET", nil, headers, nil)
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d %d %d\n",
        summary.requests, summary.duration,
        latency:percentile(50), latency:percentile(99),
        e.status, e.connect + e.read + e.write + e.timeout))
end
