"""The wrk scripts of the benchmark, as Lua text.

Every script counts answers by status and error code per thread and prints them from
``done()`` as one ``WRK_JSON`` line; the purchase scripts send a distinct user id with
every request (thread number plus a per-thread counter), and report each 201's user and
purchase id as a ``WON`` line. wrk arguments after ``--``: user prefix, then the number of
purchases per thread after which a thread stops (0: never) and prints ``THREAD_DONE``.
:data:`REPEAT` instead cycles through the users :func:`repeat_users` names.
"""

from __future__ import annotations

from flashflow.http.wire import API as CURRENT_PATH
from flashflow.http.wire import CURRENT_PURCHASE as PURCHASE_PATH

_COMMON = r"""
threads = {}
answers = {}
won = {}
sent = 0
answered = 0
prefix = "u"
quota = 0

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = (args[1] or "u") .. "-" .. id .. "-"
  quota = tonumber(args[2] or "0")
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

_PURCHASE_REQUEST = r"""
function purchase(user)
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"},
                    '{"userId": "' .. user .. '"}')
end
""".replace("%(path)s", PURCHASE_PATH)

PURCHASE = _COMMON + _PURCHASE_REQUEST + r"""
filler = nil
filler_since = nil
finished = false
checked = false

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
    return purchase(prefix .. "check")
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
  return purchase(prefix .. sent)
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
"""


def repeat_users(base: str, count: int) -> list[str]:
    """The users :data:`REPEAT` asks for, over and over, given its arguments."""
    return [f"{base}-{i}" for i in range(count)]


#: Purchases by the same few users over and over; arguments: user base, number of users.
REPEAT = _COMMON + _PURCHASE_REQUEST + r"""
function init(args)
  base = args[1] or "repeat"
  users = tonumber(args[2] or "50")
end

function request()
  sent = sent + 1
  return purchase(base .. "-" .. (sent % users))
end

function response(status, headers, body)
  count(status, body)
end
"""
