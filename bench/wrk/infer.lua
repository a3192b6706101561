-- wrk script for bench/batching.py, proxy.py and security.py: POSTs the same JSON body on every request.
--
--   wrk -t1 -c64 -d5s --latency -s bench/wrk/infer.lua http://127.0.0.1:8080/v2/models/mlp/infer \
--       -- /path/to/body.json
--
-- The body is read from the file named by the first script argument (after `--`); an optional
-- second argument names a file of extra request headers, one `Name: value` per line. `done`
-- prints one machine-readable line, `BENCH key=value ...`, with exact percentiles in
-- microseconds, so the caller does not have to parse wrk's rounded, unit-suffixed text.

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s infer.lua URL -- BODY_FILE")
   end
   local file = assert(io.open(path, "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "application/json"
   if args[2] ~= nil then
      for line in io.lines(args[2]) do
         local name, value = line:match("^([^:]+):%s*(.*)$")
         if name ~= nil then
            wrk.headers[name] = value
         end
      end
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p90_us=%d p99_us=%d mean_us=%.1f "
         .. "max_us=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
      latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
