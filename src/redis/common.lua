-- Shared by check_and_count.lua and give_back.lua (each script is this file followed by
-- its own text: see src/redis/script.rs): the server's clock, integer helpers, and where
-- and how each algorithm keeps its state.
--
-- Time is this server's clock (TIME), so replicas with skewed clocks agree. State, each
-- written in the step that creates it with an expiry (PX), so nothing lives forever:
--   <key>:<window>:<window start>  fixed window: the count
--   <key>:<window>:s               sliding window: a list of admit times in ms, newest first
--                                  (one element per hit); expires when the newest leaves
--   <key>:<window>:b               token bucket (GCRA): "<debt> <at>", the theoretical
--                                  arrival time's lead over `at`, in 1/<window> of a token:
--                                  a hit adds <window>, each ms pays back <limit>; expires
--                                  when paid off (the bucket is full again)
-- The last component (digits, "s" or "b") keeps algorithms and windows apart: a rule whose
-- algorithm changes never reads another algorithm's state.
--
-- Lua numbers are doubles: every quantity stays an exact integer below 2^53.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MAX_EXACT = 9007199254740991 -- 2^53 - 1

local function fmt(n)
  return string.format('%d', n)
end

-- ceil(a / b) for non-negative integers, b > 0, exact.
local function ceil_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if q * b < a then q = q + 1 end
  return q
end

-- One table per algorithm, named as the modules of src/limiter/memory.rs.
local fixed, sliding, bucket = {}, {}, {}

-- The window containing `at`.
function fixed.name(key, win, at)
  return key .. ':' .. fmt(win) .. ':' .. fmt(at - (at % win))
end

function sliding.name(key, win)
  return key .. ':' .. fmt(win) .. ':s'
end

function bucket.name(key, win)
  return key .. ':' .. fmt(win) .. ':b'
end

-- The stored debt and when it was written; nil for a full bucket.
function bucket.read(name)
  local v = redis.call('GET', name)
  if not v then return nil end
  local sp = string.find(v, ' ')
  return tonumber(string.sub(v, 1, sp - 1)), tonumber(string.sub(v, sp + 1))
end

-- The stored debt drained to now at `limit` per ms.
function bucket.debt_now(name, limit)
  local debt, at = bucket.read(name)
  if not debt then return 0 end
  return math.max(0, debt - math.max(0, now - at) * limit)
end

-- Writes a debt at now; a paid-off bucket holds no state.
function bucket.write(name, debt, limit, win)
  if debt <= 0 then
    redis.call('DEL', name)
  else
    local ttl = win
    if limit > 0 then ttl = ceil_div(debt, limit) end
    redis.call('SET', name, fmt(debt) .. ' ' .. fmt(now), 'PX', math.max(1, ttl))
  end
end
