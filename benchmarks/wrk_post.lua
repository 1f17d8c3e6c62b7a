-- modelport benchmarks: wrk script used by serving_http.py.
-- Every request is the same POST; its JSON body is read once from the file named by $BODY_FILE.
-- When the run ends, one line starting with "WRK_RESULT " is printed, holding a JSON object with the
-- request count, the run duration, latency percentiles (microseconds) and wrk's error counters.

local path = os.getenv("BODY_FILE")
if path == nil or path == "" then
  error("set BODY_FILE to the request body file")
end
local fh = assert(io.open(path, "rb"))
local body = fh:read("*a")
fh:close()

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = body

function done(summary, latency, requests)
  local errs = summary.errors
  local fields = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"p50_us":%d', latency:percentile(50)),
    string.format('"p90_us":%d', latency:percentile(90)),
    string.format('"p99_us":%d', latency:percentile(99)),
    string.format('"max_us":%d', latency.max),
    string.format('"mean_us":%.1f', latency.mean),
    string.format('"err_connect":%d', errs.connect),
    string.format('"err_read":%d', errs.read),
    string.format('"err_write":%d', errs.write),
    string.format('"err_status":%d', errs.status),
    string.format('"err_timeout":%d', errs.timeout),
  }
  io.write("WRK_RESULT {" .. table.concat(fields, ",") .. "}\n")
end
