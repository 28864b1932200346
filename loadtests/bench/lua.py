"""The wrk scripts of the benchmark, as Lua text.

Every script counts answers by status and error code per thread and prints them from
``done()`` as one ``WRK_JSON`` line; the purchase scripts send a distinct user id with
every request (thread number plus a per-thread counter), and report each 201's user and
purchase id as a ``WON`` line. wrk arguments after ``--``: user prefix, then the number of
purchases per thread after which a thread stops (0: never) and prints ``THREAD_DONE``, then
(with auth on) a path holding ``{id}``: thread N reads its tokens from that path with N for
``{id}``, one a line, the token of user number i on line i. Users are then drawn from that
pool, cycling through it when a run asks more often than it holds tokens.
"""

from __future__ import annotations

PURCHASE_PATH = "/api/v1/flash-sales/current/purchase"

_COMMON = r"""
threads = {}
answers = {}
won = {}
sent = 0
answered = 0
prefix = "u"
quota = 0
tokens = nil

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = (args[1] or "u") .. "-" .. id .. "-"
  quota = tonumber(args[2] or "0")
  if args[3] and args[3] ~= "" then
    tokens = {}
    for line in io.lines((string.gsub(args[3], "{id}", tostring(id)))) do
      table.insert(tokens, line)
    end
  end
end

function user(n)
  if tokens then n = (n - 1) % #tokens + 1 end
  return prefix .. n, n
end

function headers_for(n, extra)
  local headers = extra or {}
  if tokens then headers["Authorization"] = "Bearer " .. tokens[n] end
  return headers
end

function count(status, body)
  local key = tostring(status)
  if status >= 400 then
    local code = string.match(body, '"code":%s*"([A-Z_]+)"')
    if code then key = key .. " " .. code end
  end
  answers[key] = (answers[key] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for key, n in pairs(thread:get("answers")) do totals[key] = (totals[key] or 0) + n end
    for _, line in ipairs(thread:get("won")) do io.write("WON ", line, "\n") end
  end
  local parts = {}
  for key, n in pairs(totals) do table.insert(parts, string.format('"%s": %d', key, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "mean_us": %.1f, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "answers": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status,
    e.timeout, table.concat(parts, ", ")))
end
"""

GET = _COMMON + r"""
function response(status, headers, body)
  count(status, body)
end
"""

STATUS = _COMMON + r"""
function request()
  sent = sent + 1
  local name, n = user(sent)
  return wrk.format("GET", "%(path)s?userId=" .. name, headers_for(n))
end

function response(status, headers, body)
  count(status, body)
end
""".replace("%(path)s", PURCHASE_PATH)

PURCHASE = _COMMON + r"""
filler = nil
filler_since = nil
finished = false
checked = false

function purchase(n)
  local name, i = user(n)
  return wrk.format("POST", "%(path)s", headers_for(i, {["Content-Type"] = "application/json"}),
                    '{"userId": "' .. name .. '"}')
end

function finish()
  -- wrk's main thread sleeps for the whole -d: tell the caller, who interrupts it.
  if not finished then
    finished = true
    io.write("THREAD_DONE\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

function request()
  if id == 1 and not checked then
    -- wrk calls the first thread's request() once to check it, and never sends that one.
    checked = true
    return purchase(0)
  end
  if quota > 0 and sent >= quota then
    -- Every distinct user of this thread has asked: keep the connections busy with a
    -- cheap read until the last purchase answer is in, so none is cut mid-flight. A
    -- request that timed out never answers: past wrk's 10 s timeout, stop regardless.
    filler = filler or wrk.format("GET", "/healthz")
    filler_since = filler_since or os.time()
    if os.time() - filler_since > 12 then
      finish()
    end
    return filler
  end
  sent = sent + 1
  return purchase(sent)
end

function response(status, headers, body)
  if status == 200 and quota > 0 then
    return
  end
  count(status, body)
  answered = answered + 1
  if status == 201 then
    local user = string.match(body, '"userId":%s*"([^"]+)"')
    local pid = string.match(body, '"purchaseId":%s*"([^"]+)"')
    table.insert(won, user .. " " .. pid)
  end
  if quota > 0 and answered >= quota then
    finish()
  end
end
""".replace("%(path)s", PURCHASE_PATH)
