-- give_back: undoes, exactly, what one check_and_count call took, for a Redis Cluster
-- request that another slot rejected (or failed) after this slot counted it
-- (RedisStore::give_back, src/redis/cluster.rs): a rejected request consumes nothing.
-- (common.lua comes first: clock, helpers, state formats.)
--
-- KEYS[i]  counter i's key, as the call that took the hits had it
-- ARGV[1]  taken: the server time (ms) that call counted at (its reply's now_ms)
-- then 4 fields per counter (decode() is the one place that reads them):
--   algorithm ("f", "s", "b"), window ms, limit, hits taken
-- Returns the number of counters.

local FIELDS = 4

local function decode()
  local counters = {}
  for i = 1, #KEYS do
    local a = 1 + (i - 1) * FIELDS
    counters[i] = {
      key = KEYS[i],
      algorithm = ARGV[a + 1],
      win = tonumber(ARGV[a + 2]),
      limit = tonumber(ARGV[a + 3]),
      hits = tonumber(ARGV[a + 4]),
    }
  end
  return tonumber(ARGV[1]), counters
end

-- The window the hits went into, unless it has ended.
function fixed.give_back(c, taken)
  local name = fixed.name(c.key, c.win, taken)
  local ends = taken - (taken % c.win) + c.win
  if ends <= now then return end
  local count = math.max(0, tonumber(redis.call('GET', name) or '0') - c.hits)
  if count == 0 then
    redis.call('DEL', name)
  else
    redis.call('SET', name, fmt(count), 'PX', ends - now)
  end
end

-- Entries with one time are interchangeable: removing `hits` of them is exact.
function sliding.give_back(c, taken)
  redis.call('LREM', sliding.name(c.key, c.win), c.hits, fmt(taken))
end

-- Untouched since that call: returning the tokens is exact (the debt only drained since,
-- and a drain to zero clamps the same with or without our hits). Touched by others
-- meanwhile: the bucket may have been full without our hits and refilled less than it
-- seems, so return only what cannot have been refilled since; a returned token must never
-- let the bucket run ahead of its real history.
function bucket.give_back(c, taken)
  local name = bucket.name(c.key, c.win)
  local _, at = bucket.read(name)
  if not at then return end
  local give = c.hits * c.win
  if at ~= taken then
    give = give - c.limit * math.max(0, now - taken)
  end
  if give > 0 then
    bucket.write(name, math.max(0, bucket.debt_now(name, c.limit) - give), c.limit, c.win)
  end
end

local ALGORITHMS = {f = fixed, s = sliding, b = bucket}

local taken, counters = decode()
for _, c in ipairs(counters) do
  ALGORITHMS[c.algorithm].give_back(c, taken)
end
return #counters
