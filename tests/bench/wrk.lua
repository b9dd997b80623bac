-- wrk script for scripts/bench. Everything comes from the environment:
--   BENCH_METHOD     GET (default) or POST
--   BENCH_BODY_FILE  request body (POST)
--   BENCH_AUTH       value of the Authorization header, if any
--   BENCH_REQUESTS   after this many responses print `BENCH_REACHED`, on which
--                    run.mjs sends SIGINT (wrk's own way to stop early and
--                    report: thread:stop() would still wait out -d);
--                    0 or unset: run for the -d duration
--   BENCH_UNIQUE     when set, each request's body has every `__N__` replaced
--                    by this value and a request counter: no two requests of
--                    the run (nor of runs with other values) are the same
-- At the end it prints one line, `BENCH_JSON {...}`: requests, duration,
-- latency percentiles in µs, and error counts, which run.mjs parses.

local method = os.getenv("BENCH_METHOD") or "GET"
local body_file = os.getenv("BENCH_BODY_FILE")
local auth = os.getenv("BENCH_AUTH")
local limit = tonumber(os.getenv("BENCH_REQUESTS") or "0") or 0

wrk.method = method
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
if auth and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

local unique = os.getenv("BENCH_UNIQUE")
if unique and unique ~= "" then
  local n = 0
  local template = wrk.body
  function request()
    n = n + 1
    local body = string.gsub(template, "__N__", unique .. "-" .. n)
    return wrk.format(nil, nil, nil, body)
  end
end

-- Only defined for fixed-count runs: a response() hook makes wrk parse every
-- response body, a small cost kept out of the throughput runs.
if limit > 0 then
  local seen = 0
  function response(status, headers, body)
    seen = seen + 1
    if seen == limit then
      io.write("BENCH_REACHED\n")
      io.flush()
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"non2xx":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.status, e.connect, e.read, e.write, e.timeout))
end
