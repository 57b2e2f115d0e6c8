-- wrk script: replays a file of prepared requests, giving each request sent a unique requestId.
--
-- Usage: wrk -t T -c C -d D -s bench/wrk/requests.lua http://127.0.0.1:PORT -- FILE RUN_ID
--   FILE    one request per line: METHOD \t PATH \t HEADERS \t BODY, where HEADERS is
--           "Name: value" pairs joined by \31 (unit separator) and BODY may be empty.
--           Every "{rid}" in BODY becomes RUN_ID-<thread>-<n>: unique per request and per run.
--   RUN_ID  a fresh nonce per wrk run, so reruns never replay earlier requestIds.
-- Each thread walks the file in order from its own offset. done() prints one line,
-- "BENCH {json}", with counts, errors and latency percentiles in microseconds.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_no", thread_count)
end

local items, n, i, prefix, seq

function init(args)
  local file, run_id = args[1], args[2]
  items = {}
  for line in io.lines(file) do
    local method, path, packed, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    for name, value in (packed .. "\31"):gmatch("([^:\31]+):%s*([^\31]*)\31") do
      headers[name] = value
    end
    local item = { method = method, path = path, headers = headers, body = body }
    if body == "" then
      item.fixed = wrk.format(method, path, headers, nil)
    elseif not body:find("{rid}", 1, true) then
      item.fixed = wrk.format(method, path, headers, body)
    end
    items[#items + 1] = item
  end
  n = #items
  i = ((thread_no - 1) * 7919) % n
  prefix = run_id .. "-" .. thread_no .. "-"
  seq = 0
end

function request()
  i = i % n + 1
  local item = items[i]
  if item.fixed then
    return item.fixed
  end
  seq = seq + 1
  local body = item.body:gsub("{rid}", prefix .. seq)
  return wrk.format(item.method, item.path, item.headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d, "mean_us": %.1f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
