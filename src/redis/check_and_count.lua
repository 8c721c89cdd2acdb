-- check_and_count: checks every counter of a request, then counts all of them or none
-- (docs/limits-format.md §4, docs/algorithms.md). One call is one atomic step on the Redis
-- server. (common.lua comes first: clock, helpers, state formats.)
--
-- Same shape and names as the memory store (src/limiter/memory.rs), the reference; the
-- conformance suite and the differential test hold both to the same answers. Per
-- algorithm:
--   load(c)         the counter's stored state at now, as a sim
--   decide(c, sim)  one counter against a sim: its state and the sim after it (the sim
--                   given is left as it was)
--   commit(sim)     writes a sim back
-- Every counter is decided in order (counters may share state, and see each other's hits);
-- then every sim is committed, or none when an enforcing counter is over (or on a dry run).
-- A blocked batch reports each counter as stored: the same decide with 0 hits on the sim
-- as loaded.
--
-- KEYS[i]  counter i's key, without algorithm and window (all KEYS of one call share a
--          hash tag)
-- ARGV[1]  "1": dry run, count nothing
-- then 7 fields per counter (decode() is the one place that reads them):
--   algorithm   "f" fixed window, "s" sliding window, "b" token bucket
--   window      length in ms
--   limit       hits per window (a bucket: tokens refilled per window)
--   hits
--   negative    "1": give hits back (is_negative_hits)
--   enforce     "1", or "0" (shadow mode: over limit does not block the others)
--   capacity    a bucket's capacity in tokens (ignored otherwise)
--
-- Returns (reply() is the one place that writes it) {now_ms, committed (0/1), then per
-- counter: before, after, over (0/1), reset_ms, remaining}.

local FIELDS = 7

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
      negative = ARGV[a + 5] == '1',
      enforce = ARGV[a + 6] == '1',
      capacity = tonumber(ARGV[a + 7]),
    }
  end
  return ARGV[1] == '1', counters
end

local function reply(committed, states)
  local out = {now, committed and 1 or 0}
  for _, s in ipairs(states) do
    out[#out + 1] = s.before
    out[#out + 1] = s.after
    out[#out + 1] = s.over and 1 or 0
    out[#out + 1] = s.reset
    out[#out + 1] = s.remaining
  end
  return out
end

-- A copy of `c` with 0 hits: how the blocked report reads a counter.
local function check_only(c)
  local o = {}
  for k, v in pairs(c) do o[k] = v end
  o.hits = 0
  o.negative = false
  return o
end

-- A blocked batch's report of a counter: its own verdict (over, and then the wait until it
-- fits), the rest as stored.
local function blocked_report(decided, stored)
  local reset = stored.reset
  if decided.over then reset = decided.reset end
  return {before = stored.before, after = stored.before, over = decided.over, reset = reset,
          remaining = stored.remaining}
end

-- Fixed window ------------------------------------------------------------------------

function fixed.slot(c)
  return fixed.name(c.key, c.win, now)
end

function fixed.load(c, name)
  local n = tonumber(redis.call('GET', name) or '0')
  return {name = name, stored = n, count = n, reset = now - (now % c.win) + c.win - now}
end

function fixed.decide(c, sim)
  local count = sim.count
  local over = (not c.negative) and (c.limit == 0 or count + c.hits > c.limit)
  local after
  if c.negative then after = math.max(count - c.hits, 0) else after = count + c.hits end
  local state = {before = count, after = after, over = over, reset = sim.reset,
                 remaining = math.max(0, c.limit - after)}
  return state, {name = sim.name, stored = sim.stored, count = after, reset = sim.reset}
end

function fixed.commit(sim)
  if sim.count == sim.stored then return end
  if sim.count == 0 then
    redis.call('DEL', sim.name)
  else
    redis.call('SET', sim.name, fmt(sim.count), 'PX', sim.reset)
  end
end

-- Sliding window ----------------------------------------------------------------------
-- A sim: `stored` logged hits in the window; of them the newest `pop` are to be removed,
-- and `add` hits at now are to be logged.

function sliding.slot(c)
  return sliding.name(c.key, c.win)
end

function sliding.load(c, name)
  -- A hit at t counts in (t, t + window]: drop the ones that have left (oldest last).
  local last = redis.call('LINDEX', name, -1)
  while last and tonumber(last) + c.win <= now do
    redis.call('RPOP', name)
    last = redis.call('LINDEX', name, -1)
  end
  return {name = name, win = c.win, stored = redis.call('LLEN', name), pop = 0, add = 0}
end

-- The k-th oldest hit (1-based) of a log whose newest `pop` stored hits are removed: a
-- kept stored one, or one logged now.
local function kth(sim, k, pop)
  if k <= sim.stored - pop then
    return tonumber(redis.call('LINDEX', sim.name, -k))
  end
  return now
end

function sliding.decide(c, sim)
  local limit, hits, win = c.limit, c.hits, c.win
  local stored, pop, add = sim.stored, sim.pop, sim.add
  local count = stored - pop + add
  local over = (not c.negative) and (limit == 0 or count + hits > limit)
  local after
  if c.negative then
    local from_new = math.min(hits, add)
    local from_stored = math.min(hits - from_new, stored - pop)
    add = add - from_new
    pop = pop + from_stored
    after = count - from_new - from_stored
  else
    -- A shadow-mode log counts past its limit, but one entry past it is enough to stay
    -- over: the log never holds more than limit + 1 entries.
    local logged = hits
    if over then logged = math.min(hits, math.max(0, limit + 1 - count)) end
    add = add + logged
    after = count + logged
  end
  local reset
  if over then
    if limit == 0 or hits > limit then
      -- Never fits: the time until the log is empty.
      if count == 0 then reset = win else reset = kth(sim, count, pop) + win - now end
    else
      -- The oldest `count + hits - limit` hits must leave first.
      reset = kth(sim, count + hits - limit, pop) + win - now
    end
  elseif after == 0 then
    reset = 0
  else
    reset = kth(sim, 1, pop) + win - now
  end
  local state = {before = count, after = after, over = over, reset = math.max(0, reset),
                 remaining = math.max(0, limit - after)}
  return state, {name = sim.name, win = win, stored = stored, pop = pop, add = add}
end

function sliding.commit(sim)
  if sim.pop > 0 then
    redis.call('LTRIM', sim.name, sim.pop, -1)
  end
  if sim.add > 0 then
    local stamp = fmt(now)
    local left = sim.add
    while left > 0 do
      local chunk = {}
      for j = 1, math.min(left, 1000) do chunk[j] = stamp end
      redis.call('LPUSH', sim.name, unpack(chunk))
      left = left - #chunk
    end
    redis.call('PEXPIRE', sim.name, sim.win)
  elseif sim.pop > 0 then
    local newest = redis.call('LINDEX', sim.name, 0)
    if newest then
      redis.call('PEXPIRE', sim.name, math.max(1, tonumber(newest) + sim.win - now))
    end
  end
end

-- Token bucket ------------------------------------------------------------------------
-- A sim: the debt as stored (drained to now), and after the batch's ops so far.

function bucket.slot(c)
  return bucket.name(c.key, c.win)
end

function bucket.load(c, name)
  local d = bucket.debt_now(name, c.limit)
  return {name = name, stored = d, debt = d, limit = c.limit, win = c.win}
end

function bucket.decide(c, sim)
  local limit, hits, win, cap, debt = c.limit, c.hits, c.win, c.capacity, sim.debt
  local full = cap * win
  local function tokens(d)
    return math.min(cap, math.floor(math.max(0, full - d) / win))
  end
  local over = (not c.negative) and (limit == 0 or hits > cap or debt + hits * win > full)
  local new_debt
  if c.negative then new_debt = math.max(0, debt - hits * win) else new_debt = debt + hits * win end
  -- A shadow-mode bucket counts past its capacity; keep its debt an exact integer.
  new_debt = math.min(new_debt, MAX_EXACT)
  local reset
  if limit == 0 then
    reset = win
  elseif over and hits > cap then
    -- Never fits: the time until the bucket is full.
    reset = ceil_div(debt, limit)
  elseif over then
    reset = ceil_div(debt + hits * win - full, limit)
  elseif new_debt == 0 then
    reset = 0
  else
    local tk = tokens(new_debt)
    if tk >= cap then
      reset = 0
    else
      reset = ceil_div(new_debt - (cap - tk - 1) * win, limit)
    end
  end
  local state = {before = cap - tokens(debt), after = cap - tokens(new_debt), over = over,
                 reset = reset, remaining = tokens(new_debt)}
  return state, {name = sim.name, stored = sim.stored, debt = new_debt, limit = sim.limit,
                 win = sim.win}
end

function bucket.commit(sim)
  if sim.debt ~= sim.stored then
    bucket.write(sim.name, sim.debt, sim.limit, sim.win)
  end
end

-- The batch ---------------------------------------------------------------------------

local ALGORITHMS = {f = fixed, s = sliding, b = bucket}

local dry_run, counters = decode()
-- Per state key: the sim as loaded, the sim after the ops so far, its algorithm; `order`
-- lists the keys by first use, so commits run in a stable order.
local loaded, sims, kinds, order, states = {}, {}, {}, {}, {}
local blocked = dry_run
for i, c in ipairs(counters) do
  local algorithm = ALGORITHMS[c.algorithm]
  local slot = algorithm.slot(c)
  c.slot = slot
  if not sims[slot] then
    loaded[slot] = algorithm.load(c, slot)
    sims[slot] = loaded[slot]
    kinds[slot] = algorithm
    order[#order + 1] = slot
  end
  local state
  state, sims[slot] = algorithm.decide(c, sims[slot])
  states[i] = state
  if state.over and c.enforce then blocked = true end
end

if blocked then
  for i, c in ipairs(counters) do
    local stored = ALGORITHMS[c.algorithm].decide(check_only(c), loaded[c.slot])
    states[i] = blocked_report(states[i], stored)
  end
  return reply(false, states)
end

for _, slot in ipairs(order) do
  kinds[slot].commit(sims[slot])
end
return reply(true, states)
