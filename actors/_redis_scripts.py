"""The Lua scripts that make the stock gate atomic in Redis.

User ids travel only as script arguments (ARGV), never inside the script text.
"""

# Every script that changes a stock publishes "<sale id> <stock>" on the stock channel
# (KEYS[3]), so stock feeds in every process and on every host see every change.

# KEYS: stock, buyers, channel. ARGV: sale id, then user, purchase id, user, purchase id, ...
# A buyer's value is "<purchase id>:<Redis time in ms>", so the reconciler can tell how
# old a reservation is by one clock for every host.
# Returns {-1} when the gate is not loaded, else {stock_after, code1, info1, code2, info2, ...}
# with code 0 = reserved (info = stock left), 1 = already bought (info = purchase id),
# 2 = sold out.
RESERVE = """
redis.replicate_commands()
local stock = redis.call('GET', KEYS[1])
if not stock then return {-1} end
stock = tonumber(stock)
local start = stock
local now = redis.call('TIME')
local stamp = ':' .. (now[1] * 1000 + math.floor(now[2] / 1000))
local out = {0}
for i = 2, #ARGV, 2 do
  local prev = redis.call('HGET', KEYS[2], ARGV[i])
  if prev and string.sub(prev, 1, #ARGV[i + 1] + 1) == ARGV[i + 1] .. ':' then
    -- this very reservation, sent again after a lost reply: the same answer, no new unit
    out[#out + 1] = 0; out[#out + 1] = stock
  elseif prev then
    out[#out + 1] = 1; out[#out + 1] = prev
  elseif stock <= 0 then
    out[#out + 1] = 2; out[#out + 1] = 0
  else
    stock = stock - 1
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. stamp)
    out[#out + 1] = 0; out[#out + 1] = stock
  end
end
if stock ~= start then
  redis.call('SET', KEYS[1], stock)
  redis.call('PUBLISH', KEYS[3], ARGV[1] .. ' ' .. stock)
end
out[1] = stock
return out
"""

# KEYS: stock, buyers, channel. ARGV: user, purchase id, restock flag ('1' returns the
# unit), sale id.
# Releases only the reservation it names, so a release can never be applied twice.
RELEASE = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held or (held ~= ARGV[2] and string.sub(held, 1, #ARGV[2] + 1) ~= ARGV[2] .. ':') then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  local stock = redis.call('INCR', KEYS[1])
  redis.call('PUBLISH', KEYS[3], ARGV[4] .. ' ' .. stock)
end
return 1
"""

# KEYS: stock, buyers, channel. ARGV: remaining, sale id, user, purchase id, ...
# Loads the gate only when it is missing, so a gate another process loaded is never clobbered.
LOAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[2] .. ' ' .. ARGV[1])
return 1
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

# KEYS: stock, buyers, channel. ARGV: sale id, then user, purchase id, ...
# Puts committed purchases the gate does not hold back into it (a commit whose reply was
# lost and whose unit was returned, or one that landed while the gate was being rebuilt):
# the buyer is recorded and a unit taken, never below 0. Returns how many were claimed.
CLAIM = """
local stock = redis.call('GET', KEYS[1])
if not stock then return 0 end
stock = tonumber(stock)
local claimed = 0
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1] .. ':0') == 1 then
    claimed = claimed + 1
    if stock > 0 then stock = stock - 1 end
  end
end
if claimed > 0 then
  redis.call('SET', KEYS[1], stock)
  redis.call('PUBLISH', KEYS[3], ARGV[1] .. ' ' .. stock)
end
return claimed
"""
