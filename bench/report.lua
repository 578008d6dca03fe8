-- wrk script shared by every run of the harness (bench/wrk.py drives it through env vars).
--
-- BENCH_REQUESTS: file with one request per line, "METHOD<TAB>PATH<TAB>COOKIE<TAB>BODY" (an empty
--   PATH is the URL's own, so one run can mix page views and saves). One line keeps
--   wrk's static fast path (no Lua call per request); several lines are sent round-robin, each
--   thread starting at a different line, so a POST run spreads over many sessions.
-- BENCH_COUNT_STATUS=1: count every response by status (the fault run). Off otherwise because a
--   response() hook makes wrk parse every body, which costs the load generator CPU on a 2-core box.
-- done() prints one line "BENCH_JSON {...}" that bench/wrk.py parses; wrk's own text stays as is.

local lines = {}
for line in io.lines(os.getenv("BENCH_REQUESTS")) do
   local method, path, cookie, body = line:match("^(%u+)\t([^\t]*)\t([^\t]*)\t(.*)$")
   lines[#lines + 1] = { method = method, path = path ~= "" and path or nil, cookie = cookie, body = body }
end

local function headers_for(entry)
   local headers = { ["Cookie"] = entry.cookie ~= "" and entry.cookie or nil }
   if entry.method == "POST" then
      headers["Content-Type"] = "application/x-www-form-urlencoded"
   end
   return headers
end

local first = lines[1]
wrk.method = first.method
wrk.path = first.path or wrk.path
wrk.headers = headers_for(first)
wrk.body = first.body ~= "" and first.body or nil

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
   thread:set("offset", #threads * 7919)
end

if #lines > 1 then
   local prepared = {}
   local index = 0

   function init(args)
      for i, entry in ipairs(lines) do
         prepared[i] = wrk.format(entry.method, entry.path, headers_for(entry), entry.body ~= "" and entry.body or nil)
      end
      index = offset % #prepared
   end

   function request()
      index = index % #prepared + 1
      return prepared[index]
   end
end

-- BENCH_SPREAD_CLIENTS=1: each request from a client address of its own (X-Forwarded-For, which
--   the pod's nginx believes from loopback as it believes the ALB), so that nginx's per-address
--   limit refuses none of a flood from many clients (bench/overload.py). First line only.
if os.getenv("BENCH_SPREAD_CLIENTS") == "1" then
   local sent = 0

   function request()
      sent = sent + 1
      local n = offset + sent
      local headers = headers_for(first)
      headers["X-Forwarded-For"] = string.format("198.18.%d.%d", math.floor(n / 250) % 250, n % 250 + 1)
      return wrk.format(first.method, first.path, headers, first.body ~= "" and first.body or nil)
   end
end

if os.getenv("BENCH_COUNT_STATUS") == "1" then
   statuses = {}

   function response(status, headers, body)
      statuses[status] = (statuses[status] or 0) + 1
   end
end

function done(summary, latency, requests)
   local counted = {}
   for _, thread in ipairs(threads) do
      local per_thread = thread:get("statuses")
      if per_thread then
         for status, count in pairs(per_thread) do
            counted[status] = (counted[status] or 0) + count
         end
      end
   end
   local status_parts = {}
   for status, count in pairs(counted) do
      status_parts[#status_parts + 1] = string.format('"%d": %d', status, count)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"statuses": {%s}}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout,
      table.concat(status_parts, ", ")))
end
