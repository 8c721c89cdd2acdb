-- Checks every counter of a request, then counts all of them or none (limits-format.md §4,
-- algorithms.md). One call is one atomic step on the Redis server. The memory store
-- (src/limiter/memory.rs) is the reference this script mirrors; the conformance suite holds
-- both to the same answers.
--
-- KEYS[i]   a counter key without algorithm and window (all KEYS of one call share a hash tag)
-- ARGV[1]   "1": dry run, count nothing
-- ARGV[2 + 8(i-1) ...] for counter i:
--   algorithm   "f" fixed window, "s" sliding window, "b" token bucket
--   window      length in ms
--   limit       hits per window (a bucket: tokens refilled per window)
--   hits
--   mode        "0" take hits; "1" give hits back (is_negative_hits);
--               "2" give back hits that a call at server time `taken` took (a Redis Cluster
--               request rejected on another slot: see RedisStore::give_back)
--   enforce     "1", or "0" (shadow mode: over limit does not block the others)
--   capacity    a bucket's capacity in tokens (ignored otherwise)
--   taken       ms, for mode "2"
--
-- Time is this server's clock (TIME), so replicas with skewed clocks agree. State, each
-- written in the step that creates it with an expiry (PX), so nothing lives forever:
--   KEYS[i]:<window>:<window start>  fixed window: the count
--   KEYS[i]:<window>:s               sliding window: a list of admit times in ms, newest first
--                                    (one element per hit); expires when the newest leaves
--   KEYS[i]:<window>:b               token bucket (GCRA): "<debt> <at>", the theoretical
--                                    arrival time's lead over `at`, in 1/<window> of a token:
--                                    a hit adds <window>, each ms pays back <limit>; expires
--                                    when paid off (the bucket is full again)
-- The last component (digits, "s" or "b") keeps algorithms and windows apart: a rule whose
-- algorithm changes never reads another algorithm's state.
--
-- Lua numbers are doubles: every quantity stays an exact integer below 2^53 (the loader
-- bounds a bucket's capacity × window).
--
-- Returns {now_ms, committed (0/1), then per counter: before, after, over (0/1), reset_ms,
-- remaining}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = ARGV[1] == '1'
local N = 8
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

local function fixed_name(key, win, at)
  return key .. ':' .. fmt(win) .. ':' .. fmt(at - (at % win))
end

local function bucket_debt(name, limit)
  local v = redis.call('GET', name)
  if not v then return 0 end
  local sp = string.find(v, ' ')
  local debt = tonumber(string.sub(v, 1, sp - 1))
  local at = tonumber(string.sub(v, sp + 1))
  return math.max(0, debt - math.max(0, now - at) * limit)
end

local function write_bucket(name, debt, limit, win)
  if debt <= 0 then
    redis.call('DEL', name)
  else
    local ttl = win
    if limit > 0 then ttl = ceil_div(debt, limit) end
    redis.call('SET', name, fmt(debt) .. ' ' .. fmt(now), 'PX', math.max(1, ttl))
  end
end

-- Give-backs (mode "2") first: they are exact inverses of what an earlier call took.
for i = 1, #KEYS do
  local a = 2 + (i - 1) * N
  if ARGV[a + 4] == '2' then
    local algo, win, limit, hits = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local taken = tonumber(ARGV[a + 7])
    if algo == 'f' then
      -- The window the hits went into, unless it has ended.
      local name = fixed_name(KEYS[i], win, taken)
      local ends = taken - (taken % win) + win
      if ends > now then
        local count = math.max(0, tonumber(redis.call('GET', name) or '0') - hits)
        if count == 0 then
          redis.call('DEL', name)
        else
          redis.call('SET', name, fmt(count), 'PX', ends - now)
        end
      end
    elseif algo == 's' then
      -- Entries with one time are interchangeable: removing `hits` of them is exact.
      redis.call('LREM', KEYS[i] .. ':' .. fmt(win) .. ':s', hits, fmt(taken))
    else
      -- Untouched since that call: returning the tokens is exact (the debt only drained
      -- since, and a drain to zero clamps the same with or without our hits). Touched by
      -- others meanwhile: the bucket may have been full without our hits and refilled
      -- less than it seems, so return only what cannot have been refilled since; a
      -- returned token must never let the bucket run ahead of its real history.
      local name = KEYS[i] .. ':' .. fmt(win) .. ':b'
      local v = redis.call('GET', name)
      if v then
        local at = tonumber(string.sub(v, string.find(v, ' ') + 1))
        local give = hits * win
        if at ~= taken then
          give = give - limit * math.max(0, now - taken)
        end
        if give > 0 then
          write_bucket(name, math.max(0, bucket_debt(name, limit) - give), limit, win)
        end
      end
    end
  end
end

-- Pass 1: simulate the batch in order (counters may share state), deciding each one.
local sims = {}
local names = {}
local out = {now, 0}

for i = 1, #KEYS do
  local a = 2 + (i - 1) * N
  local algo, win, limit, hits = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local mode = ARGV[a + 4]
  local negative = mode == '1'
  local enforce = ARGV[a + 5] == '1'
  local before, after, over, reset, remaining = 0, 0, false, 0, 0

  if mode == '2' then
    names[i] = false
  elseif algo == 'f' then
    local name = fixed_name(KEYS[i], win, now)
    names[i] = name
    local s = sims[name]
    if not s then
      local c = tonumber(redis.call('GET', name) or '0')
      s = {kind = 'f', stored = c, count = c, reset = now - (now % win) + win - now}
      sims[name] = s
    end
    before = s.count
    over = (not negative) and (limit == 0 or before + hits > limit)
    if negative then after = math.max(before - hits, 0) else after = before + hits end
    s.count = after
    reset = s.reset
    remaining = math.max(0, limit - after)
  elseif algo == 's' then
    local name = KEYS[i] .. ':' .. fmt(win) .. ':s'
    names[i] = name
    local s = sims[name]
    if not s then
      -- A hit at t counts in (t, t + window]: drop the ones that have left (oldest last).
      local last = redis.call('LINDEX', name, -1)
      while last and tonumber(last) + win <= now do
        redis.call('RPOP', name)
        last = redis.call('LINDEX', name, -1)
      end
      s = {kind = 's', win = win, stored = redis.call('LLEN', name), pop = 0, add = 0}
      sims[name] = s
    end
    -- The k-th oldest hit of the simulated log: a kept stored one, or one logged now.
    local function kth(k)
      if k <= s.stored - s.pop then
        return tonumber(redis.call('LINDEX', name, -k))
      end
      return now
    end
    local count = s.stored - s.pop + s.add
    before = count
    over = (not negative) and (limit == 0 or count + hits > limit)
    if over then
      if limit == 0 or hits > limit then
        if count == 0 then reset = win else reset = kth(count) + win - now end
      else
        reset = kth(count + hits - limit) + win - now
      end
    end
    if negative then
      local from_new = math.min(hits, s.add)
      local from_stored = math.min(hits - from_new, s.stored - s.pop)
      s.add = s.add - from_new
      s.pop = s.pop + from_stored
      after = count - from_new - from_stored
    else
      -- A shadow-mode log counts past its limit, but one entry past it is enough to stay
      -- over: the log never holds more than limit + 1 entries.
      local logged = hits
      if over then logged = math.min(hits, math.max(0, limit + 1 - count)) end
      s.add = s.add + logged
      after = count + logged
    end
    if not over then
      if after == 0 then reset = 0 else reset = kth(1) + win - now end
    end
    remaining = math.max(0, limit - after)
  else
    local name = KEYS[i] .. ':' .. fmt(win) .. ':b'
    names[i] = name
    local s = sims[name]
    if not s then
      local d = bucket_debt(name, limit)
      s = {kind = 'b', stored = d, debt = d, limit = limit, win = win}
      sims[name] = s
    end
    local cap = tonumber(ARGV[a + 6])
    local full = cap * win
    local function tokens(d)
      return math.min(cap, math.floor(math.max(0, full - d) / win))
    end
    local debt = s.debt
    over = (not negative) and (limit == 0 or hits > cap or debt + hits * win > full)
    local new_debt
    if negative then new_debt = math.max(0, debt - hits * win) else new_debt = debt + hits * win end
    -- A shadow-mode bucket counts past its capacity; keep its debt an exact integer.
    new_debt = math.min(new_debt, MAX_EXACT)
    if limit == 0 then
      reset = win
    elseif over and hits > cap then
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
    before = cap - tokens(debt)
    after = cap - tokens(new_debt)
    remaining = tokens(new_debt)
    s.debt = new_debt
  end

  if over and enforce then
    blocked = true
  end
  out[#out + 1] = before
  out[#out + 1] = after
  out[#out + 1] = over and 1 or 0
  out[#out + 1] = reset
  out[#out + 1] = remaining
end

if blocked then
  -- Nothing is counted: report what is stored (a later counter sharing state with an
  -- earlier one saw its hits in pass 1).
  for i = 1, #KEYS do
    local s = names[i] and sims[names[i]]
    if s then
      local a = 2 + (i - 1) * N
      local win, limit = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
      local o = 3 + (i - 1) * 5
      local over = out[o + 2] == 1
      if s.kind == 'f' then
        out[o], out[o + 1] = s.stored, s.stored
        out[o + 4] = math.max(0, limit - s.stored)
      elseif s.kind == 's' then
        out[o], out[o + 1] = s.stored, s.stored
        out[o + 4] = math.max(0, limit - s.stored)
        if not over then
          if s.stored == 0 then
            out[o + 3] = 0
          else
            out[o + 3] = tonumber(redis.call('LINDEX', names[i], -1)) + win - now
          end
        end
      else
        local cap = tonumber(ARGV[a + 6])
        local tk = math.min(cap, math.floor(math.max(0, cap * win - s.stored) / win))
        out[o], out[o + 1] = cap - tk, cap - tk
        out[o + 4] = tk
        if not over then
          if s.stored == 0 or tk >= cap then
            out[o + 3] = 0
          elseif limit == 0 then
            out[o + 3] = win
          else
            out[o + 3] = ceil_div(s.stored - (cap - tk - 1) * win, limit)
          end
        end
      end
    end
  end
  return out
end

-- Pass 2: count everything.
out[2] = 1
for name, s in pairs(sims) do
  if s.kind == 'f' then
    if s.count ~= s.stored then
      if s.count == 0 then
        redis.call('DEL', name)
      else
        redis.call('SET', name, fmt(s.count), 'PX', s.reset)
      end
    end
  elseif s.kind == 's' then
    if s.pop > 0 then
      redis.call('LTRIM', name, s.pop, -1)
    end
    if s.add > 0 then
      local stamp = fmt(now)
      local left = s.add
      while left > 0 do
        local chunk = {}
        for j = 1, math.min(left, 1000) do chunk[j] = stamp end
        redis.call('LPUSH', name, unpack(chunk))
        left = left - #chunk
      end
      redis.call('PEXPIRE', name, s.win)
    elseif s.pop > 0 then
      local newest = redis.call('LINDEX', name, 0)
      if newest then
        redis.call('PEXPIRE', name, math.max(1, tonumber(newest) + s.win - now))
      end
    end
  else
    if s.debt ~= s.stored then
      write_bucket(name, s.debt, s.limit, s.win)
    end
  end
end
return out
