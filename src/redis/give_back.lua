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
  -- What is left of that window now (differences first: exact for any window length).
  local left = c.win - (taken % c.win) - (now - taken)
  if left <= 0 then return end
  local count = math.max(0, tonumber(redis.call('GET', name) or '0') - c.hits)
  if count == 0 then
    redis.call('DEL', name)
  else
    redis.call('SET', name, fmt(count), 'PX', fmt(left))
  end
end

-- The call's hits are in the element of its admit time (hits of one time are
-- interchangeable, so taking them from that element is exact); the elements after it lose
-- them from their running totals. That rewrites the elements admitted since the call (one
-- round trip ago, at the head of the list): their number is bounded by the calls made
-- meanwhile, never by hits.
function sliding.give_back(c, taken)
  local name = sliding.name(c.key, c.win)
  local since, i = {}, 0
  while true do
    local v = redis.call('LINDEX', name, i)
    -- Gone already (expired, or given back by a negative request): nothing to undo.
    if not v then return end
    local e = sliding.parse(v)
    if e.at < taken then return end
    since[#since + 1] = e
    if e.at == taken then break end
    i = i + 1
  end
  local give = math.min(c.hits, since[#since].hits)
  for j, e in ipairs(since) do
    e.total = (e.total - give) % TOTAL_MOD
    if j == #since then e.hits = e.hits - give end
    if e.hits > 0 then
      redis.call('LSET', name, j - 1, sliding.format(e))
    else
      -- Marked, then removed: LREM finds it where it is, near the head.
      redis.call('LSET', name, j - 1, '-')
      redis.call('LREM', name, 1, '-')
    end
  end
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

clock()
local taken, counters = decode()
for _, c in ipairs(counters) do
  ALGORITHMS[c.algorithm].give_back(c, taken)
end
return #counters
