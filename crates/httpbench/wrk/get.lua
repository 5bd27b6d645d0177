-- wrk script: GET /v1/c/wrk/{prefix}-{t}-{n} of records put.lua wrote (run it first with the
-- same PREFIX; T = its thread count, N = ids per thread known to exist, e.g. 1000).
-- TOKEN=$(cat DATA/api-token) wrk -t2 -c16 -d10s --latency -s get.lua http://127.0.0.1:PORT -- PREFIX T N
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = (args[1] or "w")
  writers = tonumber(args[2] or "2")
  per = tonumber(args[3] or "1000")
  math.randomseed(tid * 7919)
  wrk.method = "GET"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
end

function request()
  local t = math.random(1, writers)
  -- wrk builds (and drops) one request per thread before the run, so put.lua's id 1 may be missing.
  local i = math.random(2, per + 1)
  return wrk.format(nil, "/v1/c/wrk/" .. prefix .. "-" .. t .. "-" .. i)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"tool":"wrk","op":"read","requests":%d,"duration_s":%.3f,"ops_per_s":%.0f,"errors":%d,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
