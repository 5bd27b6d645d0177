-- wrk script: PUT /v1/c/wrk/{prefix}-{thread}-{n} with a small JSON body, every id distinct.
-- TOKEN=$(cat DATA/api-token) wrk -t2 -c16 -d10s --latency -s put.lua http://127.0.0.1:PORT -- PREFIX
-- wrk's connections are keep-alive; its threads share the load generator's CPU with the node.
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = (args[1] or "w") .. "-" .. tid .. "-"
  n = 0
  wrk.method = "PUT"
  wrk.body = '{"name":"x","qty":1}'
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  n = n + 1
  return wrk.format(nil, "/v1/c/wrk/" .. prefix .. n)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"tool":"wrk","op":"write","requests":%d,"duration_s":%.3f,"ops_per_s":%.0f,"errors":%d,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
