-- check_and_count: decides a batch of requests, one after the other in arrival order; each
-- request checks every counter of its own, then counts all of them or none
-- (docs/limits-format.md §4, docs/algorithms.md), exactly as if it had been sent alone: a
-- request sees the hits of the requests before it in the batch, and one request being
-- refused never changes another's answer (docs/counter-store.md §11, coalescing). One call
-- is one atomic step on the Redis server. (common.lua comes first: clock, helpers, state
-- formats.)
--
-- Same shape and names as the memory store (src/limiter/memory.rs), the reference; the
-- conformance suite and the differential test hold both to the same answers. Per
-- algorithm:
--   load(c)         the counter's stored state at now, as a sim
--   decide(c, sim)  one counter against a sim: its state and the sim after it (the sim
--                   given is left as it was)
--   commit(sim)     writes a sim back
-- Every counter of a request is decided in order (counters may share state, and see each
-- other's hits); then every sim is committed, or none when the request is blocked (or on a
-- dry run): blocked when an enforcing non-quota counter is over, or when the request has
-- quota counters and every one of them is over (a shadow one never is: it passed;
-- docs/envoy-compat.md §4). A blocked request still counts its quota counters (not on a dry run), decided
-- again alone from the state as loaded. A blocked request reports each other counter as
-- stored: the same decide with 0 hits on the sim as loaded.
--
-- The call is check_and_count(keys, args): run by a Redis Function (FCALL, single node) or
-- by a script that ends with `return check_and_count(KEYS, ARGV)` (EVALSHA, Redis Cluster);
-- see src/redis/script.rs. Its args are one record per request, each:
--   mode       "0" count, "1" dry run (count nothing), "2" readiness probe: a dry run
--              that also proves this server runs what requests need (the code, and a
--              write: SET XX on a key that never exists, a no-op that a server refusing
--              writes, at maxmemory with noeviction or by ACL, refuses as it would refuse a
--              count)
--   deadline   ms of this server's clock ("0": none). A request that the call reaches
--              after it (it sat too long in a stalled server's input buffer): the service
--              has answered it as failed already, so it changes nothing and says so
--              (docs/counter-store.md §10); the others of the batch run
--   n          its number of counters
-- then 8 fields per counter (decode() is the one place that reads them):
--   algorithm   "f" fixed window, "s" sliding window, "b" token bucket
--   window      length in ms
--   limit       hits per window (a bucket: tokens refilled per window)
--   hits
--   negative    "1": give hits back (is_negative_hits)
--   enforce     "1", or "0" (shadow mode: over limit does not block the others)
--   capacity    a bucket's capacity in tokens (ignored otherwise)
--   quota       "1": quota mode (see above)
-- Its keys, in the same order: a probe's probe key (a key that never exists), each
-- counter's key without algorithm and window (all keys of one call share a hash tag on a
-- Redis Cluster).
--
-- Returns (reply() is the one place that writes it) {now_ms, then per request: status,
-- then, unless it is 2, per counter: before, after, over (0/1), reset_ms, remaining};
-- status 1: committed, 0: not (blocked, or a dry run), 2: past its deadline, nothing read
-- or written, no counters.

local HEADER, FIELDS = 3, 8

-- The n counters of a request whose fields start after args[a] and keys after keys[k].
local function decode(keys, k, args, a, n)
  local counters = {}
  for i = 1, n do
    local b = a + (i - 1) * FIELDS
    counters[i] = {
      key = keys[k + i],
      algorithm = args[b + 1],
      win = tonumber(args[b + 2]),
      limit = tonumber(args[b + 3]),
      hits = tonumber(args[b + 4]),
      negative = args[b + 5] == '1',
      enforce = args[b + 6] == '1',
      capacity = tonumber(args[b + 7]),
      quota = args[b + 8] == '1',
    }
  end
  return counters
end

local function reply(out, status, states)
  out[#out + 1] = status
  for _, s in ipairs(states) do
    out[#out + 1] = s.before
    out[#out + 1] = s.after
    out[#out + 1] = s.over and 1 or 0
    out[#out + 1] = s.reset
    out[#out + 1] = s.remaining
  end
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
  return {name = name, stored = n, count = n, reset = c.win - (now % c.win)}
end

function fixed.decide(c, sim)
  local count = sim.count
  local over = (not c.negative) and (c.limit == 0 or count + c.hits > c.limit)
  local after
  if c.negative then
    after = math.max(count - c.hits, 0)
  else
    -- A shadow-mode count goes past its limit; it stops at 2^53, where doubles stay exact.
    after = math.min(count + c.hits, MAX_EXACT)
  end
  local state = {before = count, after = after, over = over, reset = sim.reset,
                 remaining = math.max(0, c.limit - after)}
  return state, {name = sim.name, stored = sim.stored, count = after, reset = sim.reset}
end

function fixed.commit(sim)
  if sim.count == sim.stored then return end
  if sim.count == 0 then
    redis.call('DEL', sim.name)
  else
    redis.call('SET', sim.name, fmt(sim.count), 'PX', fmt(sim.reset))
  end
end

-- Sliding window ----------------------------------------------------------------------
-- The log (common.lua): a list of admit times, newest first, each with its hits and the
-- running total. A sim: the log's `n` elements, of which the oldest `cut` have left;
-- `stored` hits in the window, between the elements `first` and `newest` (with their
-- positions, 0 the oldest), above the running total `base`; of them the newest `pop` are to
-- be removed, and `add` hits at `stamp` (now, or the newest admit time if the clock went
-- back) to be logged.

function sliding.slot(c)
  return sliding.name(c.key, c.win)
end

function sliding.load(c, name)
  local sim = {name = name, win = c.win, n = 0, cut = 0, stored = 0, pop = 0, add = 0,
               stamp = now}
  local n = redis.call('LLEN', name)
  if n == 0 then return sim end
  sim.n = n
  local newest = sliding.at(name, n, n - 1)
  sim.stamp = math.max(now, newest.at)
  -- A hit at t counts in (t, t + window]: at t + window it has left. (Differences of times
  -- first: a window may be as long as 2^53 ms, and t + window would not be exact.)
  if now - newest.at >= c.win then
    sim.cut = n
    return sim
  end
  local cut = sliding.gallop(0, n - 1, function(p)
    return now - sliding.at(name, n, p).at < c.win
  end)
  local first = newest
  if cut < n - 1 then first = sliding.at(name, n, cut) end
  sim.cut, sim.first, sim.newest = cut, first, newest
  sim.base = (first.total - first.hits) % TOTAL_MOD
  sim.stored = (newest.total - sim.base) % TOTAL_MOD
  return sim
end

-- The element holding the k-th oldest stored hit (1 <= k <= stored): the first or the
-- newest element, else a galloping search on the running totals from the nearer end.
local function find(sim, k)
  if k <= sim.first.hits then return sim.first end
  if k > sim.stored - sim.newest.hits then return sim.newest end
  local name, n = sim.name, sim.n
  local function hits_to(e) return (e.total - sim.base) % TOTAL_MOD end
  local lo, hi = sim.first.pos + 1, sim.newest.pos - 1
  local p
  if k <= sim.stored / 2 then
    -- From the oldest: the first element whose total reaches k.
    p = sliding.gallop(lo, hi, function(q) return hits_to(sliding.at(name, n, q)) >= k end)
  else
    -- From the newest: the first element, going back, whose hits before it are under k.
    p = hi - sliding.gallop(0, hi - lo, function(d)
      local e = sliding.at(name, n, hi - d)
      return hits_to(e) - e.hits < k
    end)
  end
  return sliding.at(name, n, p)
end

-- The time of the k-th oldest hit (1-based) of the log as simulated, whose newest `pop`
-- stored hits are removed: a kept stored one, or one logged now.
local function kth(sim, k, pop)
  if k <= sim.stored - pop then return find(sim, k).at end
  return sim.stamp
end

function sliding.decide(c, sim)
  local limit, hits, win = c.limit, c.hits, c.win
  local stored, pop, add = sim.stored, sim.pop, sim.add
  local count = stored - pop + add
  local function leaves(t) return win - (now - t) end
  local over = (not c.negative) and (limit == 0 or count + hits > limit)
  local after
  if c.negative then
    -- The newest hits go first: those of this batch, then the stored ones.
    local from_new = math.min(hits, add)
    local from_stored = math.min(hits - from_new, stored - pop)
    add = add - from_new
    pop = pop + from_stored
    after = count - from_new - from_stored
  else
    -- A shadow-mode log counts past its limit, but one hit past it is enough to stay
    -- over: the log never holds more than limit + 1 hits.
    local logged = hits
    if over then logged = math.min(hits, math.max(0, limit + 1 - count)) end
    add = add + logged
    after = count + logged
  end
  local reset
  if over then
    if limit == 0 or hits > limit then
      -- Never fits: the time until the log is empty.
      if count == 0 then reset = win else reset = leaves(kth(sim, count, pop)) end
    else
      -- The oldest `count + hits - limit` hits must leave first.
      reset = leaves(kth(sim, count + hits - limit, pop))
    end
  elseif after == 0 then
    reset = 0
  else
    reset = leaves(kth(sim, 1, pop))
  end
  local state = {before = count, after = after, over = over, reset = math.max(0, reset),
                 remaining = math.max(0, limit - after)}
  local later = {}
  for k, v in pairs(sim) do later[k] = v end
  later.pop, later.add = pop, add
  return state, later
end

function sliding.commit(sim)
  if sim.pop == 0 and sim.add == 0 then return end
  local name = sim.name
  -- What stays of the stored log: `kept` live elements from head index `drop` on (the
  -- newer ones go with the pop, the expired tail goes too), the newest of them `head`.
  local head, kept, drop, rewrite = sim.newest, sim.n - sim.cut, 0, false
  if sim.pop > 0 then
    local keep = sim.stored - sim.pop
    if keep == 0 then
      head, kept = nil, 0
    else
      -- Cut after the element holding the keep-th hit; it keeps its part up to it.
      local e = find(sim, keep)
      drop = sim.newest.pos - e.pos
      kept = e.pos - sim.cut + 1
      head = {at = e.at, total = (sim.base + keep) % TOTAL_MOD,
              hits = e.hits - ((e.total - sim.base) % TOTAL_MOD - keep)}
      rewrite = true
    end
  end
  local new = nil
  if sim.add > 0 then
    if head and head.at == sim.stamp then
      -- One element per admit time.
      head = {at = head.at, total = (head.total + sim.add) % TOTAL_MOD,
              hits = head.hits + sim.add}
      rewrite = true
    else
      local total = sim.add
      if head then total = (head.total + sim.add) % TOTAL_MOD end
      new = {at = sim.stamp, total = total, hits = sim.add}
    end
  end
  if kept == 0 then
    redis.call('DEL', name)
  elseif drop > 0 or sim.cut > 0 then
    -- The popped and the expired elements leave in one step, whatever their number.
    redis.call('LTRIM', name, drop, drop + kept - 1)
  end
  if rewrite then redis.call('LSET', name, 0, sliding.format(head)) end
  if new then
    redis.call('LPUSH', name, sliding.format(new))
    head = new
  end
  if head then
    redis.call('PEXPIRE', name, fmt(math.max(1, sim.win - (now - head.at))))
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
    return math.min(cap, floor_div(math.max(0, full - d), win))
  end
  -- Products and sums are formed where they stay below 2^53 (hits * win only once hits
  -- fit the capacity), so each comparison is exact.
  local over = (not c.negative) and (limit == 0 or hits > cap or hits * win > full - debt)
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
    reset = ceil_div((debt - full) + hits * win, limit)
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

-- A request ---------------------------------------------------------------------------

local ALGORITHMS = {f = fixed, s = sliding, b = bucket}

-- One request, on the state the requests before it left: its status and states.
local function run(mode, counters)
  -- Per state key: the sim as loaded, the sim after the ops so far, its algorithm; `order`
  -- lists the keys by first use, so commits run in a stable order.
  local loaded, sims, kinds, order, states = {}, {}, {}, {}, {}
  local over_rule, quotas, quotas_over = false, 0, 0
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
    if c.quota then
      quotas = quotas + 1
      if c.enforce and state.over then quotas_over = quotas_over + 1 end
    elseif c.enforce and state.over then
      over_rule = true
    end
  end
  local dry = mode ~= '0'
  local blocked = dry or over_rule or (quotas > 0 and quotas_over == quotas)

  if blocked then
    -- Quota counters count anyway (not on a dry run), decided again alone, in order.
    local quota_sims, quota_order = {}, {}
    for i, c in ipairs(counters) do
      local algorithm = ALGORITHMS[c.algorithm]
      if c.quota and not dry then
        local slot = c.slot
        if not quota_sims[slot] then
          quota_sims[slot] = loaded[slot]
          quota_order[#quota_order + 1] = slot
        end
        states[i], quota_sims[slot] = algorithm.decide(c, quota_sims[slot])
      else
        local stored = algorithm.decide(check_only(c), loaded[c.slot])
        states[i] = blocked_report(states[i], stored)
      end
    end
    for _, slot in ipairs(quota_order) do
      kinds[slot].commit(quota_sims[slot])
    end
    return 0, states
  end

  for _, slot in ipairs(order) do
    kinds[slot].commit(sims[slot])
  end
  return 1, states
end

-- The fixed windows a call has read, shared by its requests (a coalesced call often holds
-- many requests for one counter): each is read once (GET) and written once, when the call
-- ends or before a request of the general path, which reads Redis itself. Requests still see
-- each other's counts in order, exactly as if each had been its own call.
local seen = {orig = {}, count = {}, reset = {}, order = {}}

local function flush_fixed()
  for _, name in ipairs(seen.order) do
    fixed.commit({name = name, stored = seen.orig[name], count = seen.count[name],
                  reset = seen.reset[name]})
  end
  seen = {orig = {}, count = {}, reset = {}, order = {}}
end

-- The same for a request of fixed windows only (the common case), without the general
-- path's tables per counter (each costs Redis time, measured in docs/counter-store.md):
-- a fixed window's sim is its count, so the steps above are inlined on plain arrays. Its
-- answers are the general path's, to the letter (the differential test holds both to the
-- memory store's). Writes status and states to `out`; what it counts goes to `seen`.
local function run_fixed(out, mode, keys, k, args, a, n)
  local names, before, after, over, limits = {}, {}, {}, {}, {}
  local resets, stored, count = {}, {}, {}
  local over_rule, quotas, quotas_over = false, 0, 0
  for i = 1, n do
    local b = a + (i - 1) * FIELDS
    local win = tonumber(args[b + 2])
    local limit, hits = tonumber(args[b + 3]), tonumber(args[b + 4])
    -- fixed.name, with the window as sent (its decimal digits).
    local name = keys[k + i] .. ':' .. args[b + 2] .. ':' .. fmt(now - (now % win))
    local c = count[name]
    if c == nil then
      c = seen.count[name]
      if c == nil then
        c = tonumber(redis.call('GET', name) or '0')
        seen.orig[name], seen.count[name] = c, c
        seen.order[#seen.order + 1] = name
      end
      stored[name] = c
    end
    local negative = args[b + 5] == '1'
    local o = (not negative) and (limit == 0 or c + hits > limit)
    local af
    if negative then af = math.max(c - hits, 0) else af = math.min(c + hits, MAX_EXACT) end
    count[name] = af
    names[i], before[i], after[i], over[i], limits[i] = name, c, af, o, limit
    resets[name] = win - (now % win)
    if args[b + 8] == '1' then
      quotas = quotas + 1
      if o and args[b + 6] == '1' then quotas_over = quotas_over + 1 end
    elseif o and args[b + 6] == '1' then
      over_rule = true
    end
  end
  local dry = mode ~= '0'
  local blocked = dry or over_rule or (quotas > 0 and quotas_over == quotas)
  if blocked then
    -- Quota counters count anyway (not on a dry run), decided again alone, in order; the
    -- others report the count as stored.
    local qcount = {}
    for i = 1, n do
      local b = a + (i - 1) * FIELDS
      local name = names[i]
      if args[b + 8] == '1' and not dry then
        local c = qcount[name] or stored[name]
        local hits = tonumber(args[b + 4])
        local af
        if args[b + 5] == '1' then
          over[i] = false
          af = math.max(c - hits, 0)
        else
          over[i] = limits[i] == 0 or c + hits > limits[i]
          af = math.min(c + hits, MAX_EXACT)
        end
        qcount[name] = af
        before[i], after[i] = c, af
      else
        before[i], after[i] = stored[name], stored[name]
      end
    end
    count = qcount
  end
  for i = 1, n do
    local name = names[i]
    local c = count[name]
    if c ~= nil then
      seen.count[name], seen.reset[name] = c, resets[name]
    end
  end
  if blocked then out[#out + 1] = 0 else out[#out + 1] = 1 end
  for i = 1, n do
    out[#out + 1] = before[i]
    out[#out + 1] = after[i]
    out[#out + 1] = over[i] and 1 or 0
    out[#out + 1] = resets[names[i]]
    out[#out + 1] = math.max(0, limits[i] - after[i])
  end
end

-- The call: every request in order, each on its own.
local function check_and_count(keys, args)
  clock()
  -- Library state outlives a call (a function's upvalues stay loaded): start clean even if
  -- the call before stopped on an error.
  seen = {orig = {}, count = {}, reset = {}, order = {}}
  local out, a, k, nargs = {now}, 0, 0, #args
  while a < nargs do
    local mode, deadline, n = args[a + 1], tonumber(args[a + 2]), tonumber(args[a + 3])
    a = a + HEADER
    local probe
    if mode == '2' then
      k = k + 1
      probe = keys[k]
    end
    if deadline > 0 and now >= deadline then
      out[#out + 1] = 2
    else
      if probe then redis.call('SET', probe, '', 'XX') end
      local all_fixed = true
      for i = 1, n do
        if args[a + (i - 1) * FIELDS + 1] ~= 'f' then all_fixed = false end
      end
      if all_fixed then
        run_fixed(out, mode, keys, k, args, a, n)
      else
        flush_fixed()
        reply(out, run(mode, decode(keys, k, args, a, n)))
      end
    end
    a = a + n * FIELDS
    k = k + n
  end
  flush_fixed()
  return out
end
