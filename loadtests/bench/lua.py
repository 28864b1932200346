"""The wrk scripts of the benchmark, as Lua text.

Every script counts answers by status and error code per thread and prints them from
``done()`` as one ``WRK_JSON`` line; the purchase scripts send a distinct user id with
every request (thread number plus a per-thread counter), and report each 201's user and
purchase id as a ``WON`` line. wrk arguments after ``--``: user prefix, then the number of
purchases per thread after which a thread stops (0: never) and prints ``THREAD_DONE``,
then, with auth on, the path :func:`purchase_tokens` returns: thread N reads its tokens from
that path with N for ``{id}``, one a line, and sends ``Authorization: Bearer`` with each
purchase; its users are then drawn from that pool, cycling through it when a run asks more
often than it holds tokens. :data:`REPEAT` instead cycles through the users
:func:`repeat_users` names (with auth on, their tokens from :func:`repeat_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from flashflow.http.wire import CURRENT_PURCHASE, HEALTHZ

#: How long a benchmark's tokens stay valid: longer than any run, a whole sale included.
TOKEN_TTL_S = 4 * 3600

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
  load_tokens(args[3])
end

function load_tokens(path)
  if path and path ~= "" then
    tokens = {}
    for line in io.lines((string.gsub(path, "{id}", tostring(id)))) do
      table.insert(tokens, line)
    end
  end
end

function user(n)
  -- The n-th user of this thread and the line of its token (the pool cycles).
  if tokens then n = (n - 1) % #tokens + 1 end
  return prefix .. n, n
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
function purchase(user, token)
  local headers = {["Content-Type"] = "application/json"}
  if tokens then headers["Authorization"] = "Bearer " .. tokens[token] end
  return wrk.format("POST", "%(path)s", headers, '{"userId": "' .. user .. '"}')
end
""".replace("%(path)s", CURRENT_PURCHASE)

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
    return purchase(user(1))
  end
  if quota > 0 and sent >= quota then
    -- Every distinct user of this thread has asked: keep the connections busy with a
    -- cheap read until the last purchase answer is in, so none is cut mid-flight. A
    -- request that timed out never answers: past wrk's 10 s timeout, stop regardless.
    filler = filler or wrk.format("GET", "%(healthz)s")
    filler_since = filler_since or os.time()
    if os.time() - filler_since > 12 then
      finish()
    end
    return filler
  end
  sent = sent + 1
  return purchase(user(sent))
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
""".replace("%(healthz)s", HEALTHZ)


def repeat_users(base: str, count: int) -> list[str]:
    """The users :data:`REPEAT` asks for, over and over, given its arguments."""
    return [f"{base}-{i}" for i in range(count)]


#: Purchases by the same few users over and over; arguments: user base, number of users,
#: then with auth on the path :func:`repeat_tokens` returns.
REPEAT = _COMMON + _PURCHASE_REQUEST + r"""
function init(args)
  base = args[1] or "repeat"
  users = tonumber(args[2] or "50")
  load_tokens(args[3])
end

function request()
  sent = sent + 1
  local n = sent % users
  return purchase(base .. "-" .. n, n + 1)
end

function response(status, headers, body)
  count(status, body)
end
"""


def thread_users(prefix: str, thread: int, count: int) -> list[str]:
    """The first ``count`` users thread ``thread`` (from 1) of a purchase script names."""
    return [f"{prefix}-{thread}-{n}" for n in range(1, count + 1)]


def purchase_tokens(directory: Path, secret: str, prefix: str, threads: int,
                    count: int) -> str:
    """Mint ``count`` tokens per thread for :data:`PURCHASE`'s users; its third argument."""
    return _token_files(directory, secret, f"{prefix}-", threads,
                        lambda thread: thread_users(prefix, thread, count))


def repeat_tokens(directory: Path, secret: str, base: str, count: int, threads: int) -> str:
    """Mint the tokens of :data:`REPEAT`'s users for every thread; its third argument."""
    users = repeat_users(base, count)
    return _token_files(directory, secret, f"{base}-", threads, lambda thread: users)


def _token_files(directory: Path, secret: str, name: str, threads: int,
                 users: Callable[[int], Iterable[str]]) -> str:
    """Thread N's tokens, for ``users(N)`` in order, one a line in a file of its own; the
    path with ``{id}`` in place of N."""
    from flashflow.settings import Settings
    from flashflow.tokens import mint

    settings = Settings(auth_jwt_secret=secret)
    template = str(directory / f"tokens-{name}{{id}}.txt")
    for thread in range(1, threads + 1):
        lines = (mint(settings, user, ttl_s=TOKEN_TTL_S) for user in users(thread))
        Path(template.replace("{id}", str(thread))).write_text("\n".join(lines) + "\n")
    return template

