"""The Lua scripts that make the stock gate atomic in Redis.

User ids travel only as script arguments (ARGV), never inside the script text. The key
layout and value formats are :mod:`actors.keys`'s, and :mod:`actors.gate_store` is the one
caller of the gate scripts; every gate script takes the keys of one sale (stock, buyers,
pending) in that order, so it touches one Redis Cluster slot.

The stock channel and the sale id travel as the first two arguments (a channel is not a key).
Every script keeps the law ``stock = total - the units of the holders`` (never below 0), and
every one that changes a stock publishes "<sale id> <stock>" on the stock channel, so stock
feeds in every process and on every host see every change.
"""

#: How many units a holder value holds: "<purchase id>:<ms>" holds one, "<id>:<ms>:<n>" n
#: (the format of :func:`actors.keys.holder_value`). Put before the scripts that weigh holders.
QUANTITY = """
local function units(value)
  local n = string.match(value, '^[^:]*:[^:]*:(%d+)$')
  return n and tonumber(n) or 1
end
"""

# ARGV: channel, sale id, then user, purchase id, quantity, user, purchase id, quantity, ...
# A new holder is written as "<purchase id>:<Redis time in ms>[:<quantity>]" and put in
# pending with that time, so the reconciler can tell how old a reservation is by one clock
# for every host. A request takes all its units or none; the requests are served in order,
# each that the stock left can serve.
# Returns {-1} when the gate is not loaded, else {stock_after, code1, info1, code2, info2, ...}
# with code 0 = reserved (info = stock left), 1 = the user already holds units (info = the
# holder value), 2 = too little stock in the gate (info = the stock then).
RESERVE = """
local stock = redis.call('GET', KEYS[1])
if not stock then return {-1} end
stock = tonumber(stock)
local start = stock
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local out = {0}
for i = 3, #ARGV, 3 do
  local prev = redis.call('HGET', KEYS[2], ARGV[i])
  local n = tonumber(ARGV[i + 2])
  if prev and string.sub(prev, 1, #ARGV[i + 1] + 1) == ARGV[i + 1] .. ':' then
    -- this very reservation, sent again after a lost reply: the same answer, no new unit
    out[#out + 1] = 0; out[#out + 1] = stock
  elseif prev then
    out[#out + 1] = 1; out[#out + 1] = prev
  elseif stock < n then
    out[#out + 1] = 2; out[#out + 1] = stock
  else
    stock = stock - n
    local value = ARGV[i + 1] .. ':' .. ms
    if n ~= 1 then value = value .. ':' .. n end
    redis.call('HSET', KEYS[2], ARGV[i], value)
    redis.call('ZADD', KEYS[3], ms, ARGV[i])
    out[#out + 1] = 0; out[#out + 1] = stock
  end
end
if stock ~= start then
  redis.call('SET', KEYS[1], stock)
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. stock)
end
out[1] = stock
return out
"""

# ARGV: user, purchase id, user, purchase id, ... of purchases the ledger committed.
# Takes them out of pending (what is in doubt); the holder stays. Returns how many settled.
SETTLE = """
local settled = 0
for i = 1, #ARGV, 2 do
  local held = redis.call('HGET', KEYS[2], ARGV[i])
  if held and string.sub(held, 1, #ARGV[i + 1] + 1) == ARGV[i + 1] .. ':' then
    settled = settled + redis.call('ZREM', KEYS[3], ARGV[i])
  end
end
return settled
"""

# ARGV: channel, sale id, user, purchase id, restock flag ('1' returns its units).
# Releases only the reservation it names, so a release can never be applied twice. A pending
# entry whose holder is gone is dropped. Returns 1 when the reservation was there to undo.
RELEASE = QUANTITY + """
local held = redis.call('HGET', KEYS[2], ARGV[3])
if not held then
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 0
end
if held ~= ARGV[4] and string.sub(held, 1, #ARGV[4] + 1) ~= ARGV[4] .. ':' then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  local stock = redis.call('INCRBY', KEYS[1], units(held))
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. stock)
end
return 1
"""

# ARGV: channel, sale id, then moves of four: ('-', user, purchase id, '') for a holder that
# leaves (a hold ended in the ledger), ('+', user, purchase id, quantity) for one that comes
# (the hold the ledger gave the units to). All in one step, leaving before coming, so the
# units are never free in between. A holder leaves only under the purchase id it names; a
# new holder is written pending, with the Redis time, so the reconciler checks it against
# the ledger like any reservation, and replaces a holder of the same user under another id.
# Applying the same moves twice changes nothing. Returns the stock, or -1 when the gate is
# not loaded (it will be built from the ledger).
HANDOVER = QUANTITY + """
local stock = redis.call('GET', KEYS[1])
if not stock then return -1 end
stock = tonumber(stock)
local start = stock
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
for i = 3, #ARGV, 4 do
  local held = redis.call('HGET', KEYS[2], ARGV[i + 1])
  local same = held and string.sub(held, 1, #ARGV[i + 2] + 1) == ARGV[i + 2] .. ':'
  if ARGV[i] == '-' then
    if same then
      redis.call('HDEL', KEYS[2], ARGV[i + 1])
      redis.call('ZREM', KEYS[3], ARGV[i + 1])
      stock = stock + units(held)
    end
  elseif not same then
    local n = tonumber(ARGV[i + 3])
    local value = ARGV[i + 2] .. ':' .. ms
    if n ~= 1 then value = value .. ':' .. n end
    redis.call('HSET', KEYS[2], ARGV[i + 1], value)
    redis.call('ZADD', KEYS[3], ms, ARGV[i + 1])
    stock = math.max(stock + (held and units(held) or 0) - n, 0)
  end
end
if stock ~= start then
  redis.call('SET', KEYS[1], stock)
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. stock)
end
return stock
"""

# KEYS: one staging hash. ARGV: user, holder value, ... One chunk of a gate rebuild; the
# staging hash expires by itself if the rebuild never finishes.
LOAD_CHUNK = """
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], 600000)
return 1
"""

# KEYS: stock, buyers, pending, staging. ARGV: channel, sale id, remaining.
# Finishes a rebuild only when the gate is still missing, so a gate another process loaded is
# never clobbered; the buyers appear at once with the stock, never half built.
LOAD_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RENAME', KEYS[4], KEYS[2])
  redis.call('PERSIST', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return 1
"""

# ARGV: channel, sale id, then user, purchase id, quantity, ... of committed purchases the
# gate may not hold. Each one missing is recorded and takes its units (never below 0); one the
# gate holds in pending under the same purchase id is settled; one held under another
# purchase id (a reservation that can never commit, since the user's purchase is this one) is
# replaced by it, settled, the stock moved by the difference of their units. Returns how
# many the gate did not hold: missing or replaced.
CLAIM = QUANTITY + """
local stock = redis.call('GET', KEYS[1])
if not stock then return 0 end
stock = tonumber(stock)
local start = stock
local claimed = 0
for i = 3, #ARGV, 3 do
  local held = redis.call('HGET', KEYS[2], ARGV[i])
  local n = tonumber(ARGV[i + 2])
  local value = ARGV[i + 1] .. ':0'
  if n ~= 1 then value = value .. ':' .. n end
  if not held then
    redis.call('HSET', KEYS[2], ARGV[i], value)
    claimed = claimed + 1
    stock = math.max(stock - n, 0)
  else
    if string.sub(held, 1, #ARGV[i + 1] + 1) ~= ARGV[i + 1] .. ':' then
      redis.call('HSET', KEYS[2], ARGV[i], value)
      claimed = claimed + 1
      stock = math.max(stock + units(held) - n, 0)
    end
    redis.call('ZREM', KEYS[3], ARGV[i])
  end
end
if stock ~= start then
  redis.call('SET', KEYS[1], stock)
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. stock)
end
return claimed
"""

# ARGV: channel, sale id, total stock, committed units, and '1' when holders may hold more
# than one unit each (their units are then summed, O(holders); else counted, O(1)).
# Sets stock = total - max(units held, committed), never below 0. Returns {-1} when the
# gate is not loaded, else {stock before, stock after}.
RECOUNT = QUANTITY + """
local stock = redis.call('GET', KEYS[1])
if not stock then return {-1} end
stock = tonumber(stock)
local held = redis.call('HLEN', KEYS[2])
if ARGV[5] == '1' then
  held = 0
  for _, value in ipairs(redis.call('HVALS', KEYS[2])) do held = held + units(value) end
end
held = math.max(held, tonumber(ARGV[4]))
local want = math.max(tonumber(ARGV[3]) - held, 0)
if want ~= stock then
  redis.call('SET', KEYS[1], want)
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. want)
end
return {stock, want}
"""

# ARGV: how many pending holders to report at most.
# What is in doubt, read in one step: {Redis ms, stock (-1: not loaded), holders, pending,
# user, holder value, reserved ms, ...} for the oldest pending holders. A pending entry whose
# holder is gone is dropped on the way.
IN_DOUBT = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local stock = redis.call('GET', KEYS[1])
local out = {ms, stock and tonumber(stock) or -1, redis.call('HLEN', KEYS[2]), 0}
local oldest = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #oldest, 2 do
  local held = redis.call('HGET', KEYS[2], oldest[i])
  if held then
    out[#out + 1] = oldest[i]; out[#out + 1] = held; out[#out + 1] = oldest[i + 1]
  else
    redis.call('ZREM', KEYS[3], oldest[i])
  end
end
out[4] = redis.call('ZCARD', KEYS[3])
return out
"""

# Token buckets, taken two by two: KEYS are (user, address) buckets in pairs; ARGV: rate per
# second, burst, for each key. A pair's tokens are taken together or not at all, so a request
# that one bucket refuses spends nothing from the other.
# Returns, per key, 0 when its bucket had a token, else the milliseconds until one is due.
TAKE_TOKENS = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for i = 1, #KEYS, 2 do
  local tokens, granted = {}, true
  for j = i, i + 1 do
    local rate, burst = tonumber(ARGV[2 * j - 1]), tonumber(ARGV[2 * j])
    local bucket = redis.call('HMGET', KEYS[j], 'tokens', 'ts')
    local level = tonumber(bucket[1]) or burst
    local ts = tonumber(bucket[2]) or now
    tokens[j] = math.min(burst, level + math.max(now - ts, 0) * rate / 1000)
    if tokens[j] < 1 then granted = false end
  end
  for j = i, i + 1 do
    local rate, burst = tonumber(ARGV[2 * j - 1]), tonumber(ARGV[2 * j])
    if tokens[j] < 1 then
      out[j] = math.ceil((1 - tokens[j]) * 1000 / rate)
    else
      out[j] = 0
      if granted then tokens[j] = tokens[j] - 1 end
    end
    redis.call('HSET', KEYS[j], 'tokens', tostring(tokens[j]), 'ts', now)
    redis.call('PEXPIRE', KEYS[j], math.ceil(burst * 1000 / rate) + 1000)
  end
end
return out
"""
