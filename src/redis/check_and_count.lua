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
-- docs/envoy-compat.md §4). A blocked request still counts its quota counters (not on a dry
-- run), decided again alone from the state as loaded. A blocked request reports each other
-- counter as stored: the same decide with 0 hits on the sim as loaded.
--
-- The call is check_and_count(keys, args): run by a Redis Function (FCALL, single node) or
-- by a script that ends with `return check_and_count(KEYS, ARGV)` (EVALSHA, Redis Cluster);
-- see src/redis/script.rs, which writes this layout. The counters of a call are listed
-- once each, whatever the number of its requests that use them (a coalesced call often
-- holds many requests on the same counters), and the requests refer to them by position:
--   args[1]      E, the number of counters listed
--   args[1 + i]  counter i's spec, "<algorithm> <window> <limit> <hits> <capacity> <flags>":
--                  algorithm  "f" fixed window, "s" sliding window, "b" token bucket
--                  window     length in ms
--                  limit      hits per window (a bucket: tokens refilled per window)
--                  hits       hits the request takes (or gives back)
--                  capacity   a bucket's capacity in tokens ("0" otherwise)
--                  flags      1: give the hits back (is_negative_hits), + 2: enforce (else
--                             shadow mode: over limit does not block the others), + 4:
--                             quota mode (see above)
--   keys[i]      counter i's key without algorithm and window
--   then two args per request:
--     shape      its mode, then ",<i>" per counter of it, in its order ("0,1,2": count, on
--                counters 1 and 2). Mode "0" count, "1" dry run (count nothing), "2"
--                readiness probe: a dry run that also proves this server runs what requests
--                need (the code, and a write: SET XX on keys[E + 1], a key that never
--                exists, a no-op that a server refusing writes, at maxmemory with
--                noeviction or by ACL, refuses as it would refuse a count)
--     deadline   ms of this server's clock ("0": none). A request that the call reaches
--                after it (it sat too long in a stalled server's input buffer): the service
--                has answered it as failed already, so it changes nothing and says so
--                (docs/counter-store.md §10); the others of the batch run
-- All keys of one call share a hash tag on a Redis Cluster.
--
-- Returns {now_ms, then per request: status, then, unless it is 2, per counter: before,
-- after, over (0/1), reset_ms, remaining}; status 1: committed, 0: not (blocked, or a dry
-- run), 2: past its deadline, nothing written, no counters. A fixed window of a
-- committed request returns its `before` only: the rest follows from it, its spec and now
-- (script.rs completes it, with the rules of fixed.decide), and a shorter reply is less
-- work here per request.
--
-- Where the time goes (Redis 7.0, counted in instructions with valgrind, which a shared
-- machine does not blur; docs/counter-store.md §11): a call of one request is about 67 000
-- (the command and its arguments 19 000, TIME 14 000, the read of its window 5 000, its
-- INCRBY 9 000), each further one-counter request about 5 000 (1 400 of them its two
-- args). In Lua, a table made costs more than its size says (the garbage collector pays
-- for it again), a tonumber is a strtod, string.format a sprintf, `t[#t + 1] =` a search.
-- So: specs and shapes are parsed once and kept, fixed windows' names too; every fixed
-- window is read once (one GET, or one MGET for all) and written once when the call ends;
-- the common requests are decided on arrays kept from call to call, with no table, string
-- or tonumber of their own, the commonest (one fixed window) in the call's loop itself.

-- Counter specs, parsed: pure, so kept across calls (a library's state outlives a call),
-- and bounded (hits and limits come from requests, so specs are many in theory).
local SPECS, spec_count, SPECS_MAX = {}, 0, 1024

local function spec(s)
  local sp = SPECS[s]
  if sp then return sp end
  local algorithm, win, limit, hits, capacity, flags =
    string.match(s, '^(%a) (%d+) (%d+) (%d+) (%d+) (%d)$')
  if not algorithm then error('check_and_count: a bad counter spec: ' .. s) end
  flags = tonumber(flags)
  sp = {algorithm = algorithm, winstr = win, win = tonumber(win), limit = tonumber(limit),
        hits = tonumber(hits), capacity = tonumber(capacity), negative = flags % 2 == 1,
        enforce = flags % 4 >= 2, quota = flags >= 4}
  if spec_count >= SPECS_MAX then SPECS, spec_count = {}, 0 end
  SPECS[s], spec_count = sp, spec_count + 1
  return sp
end

-- Small integers as decimal strings, kept (the deltas an INCRBY sends are mostly small).
local DIGITS = {}
local function digits(n)
  local s = DIGITS[n]
  if s then return s end
  s = fmt(n)
  if n >= 0 and n < 4096 then DIGITS[n] = s end
  return s
end

-- The call's state, set up by check_and_count: ncounters counters, nstates fixed windows.
-- Per counter i: espec[i] its spec, estate[i] its fixed window's index (fixed windows
-- only), ctab[i] its table for the general path (made on first use). Per fixed window j
-- (counters of one key and window share it): sname[j], sorig[j] its count in Redis,
-- scount[j] its count after the requests so far, sreset[j] the ms until it ends. The
-- arrays are kept from call to call (each table made costs, and so does the garbage
-- collection of it): a call writes positions 1..ncounters and 1..nstates before it reads
-- them, and never reads past them.
local espec, estate, sname, sorig, scount, sreset = {}, {}, {}, {}, {}, {}
local keys_, ctab, ncounters, nstates, call_no = nil, nil, 0, 0, 0

-- Fixed windows' names, kept from call to call: NAMES[key][window ms] = {start = its
-- start, name = its name, call = the last call that used it, j = its index there}. A
-- name is a string built (concatenation, string.format) for each counter of each call
-- otherwise; here once per key and window. Bounded: emptied, when a call starts, past
-- NAMES_MAX keys and windows (both come from requests).
local NAMES, names_count, NAMES_MAX = {}, 0, 8192

-- Scratch of the fast path, reused by every request (never a table per request): rc[j] is
-- window j's count within the request, valid where rgen[j] is the request's number (qc and
-- qgen the same for the blocked request's quota counters); O[i] counter i's verdict.
-- Request numbers only grow, across calls too, so nothing stale ever matches.
local rc, rgen, qc, qgen, O = {}, {}, {}, {}, {}
local request_no = 0

-- Counter i's fixed window: its index j in the call, a new one if no counter before it
-- in the call has the same key and window.
local function window(key, sp)
  local per = NAMES[key]
  if not per then
    per = {}
    NAMES[key] = per
    names_count = names_count + 1
  end
  local win = sp.win
  local start = now - (now % win)
  local w = per[win]
  if not w then
    w = {start = -1, name = '', call = 0, j = 0}
    per[win] = w
    names_count = names_count + 1
  end
  if w.start ~= start then
    -- fixed.name, with the window's digits as sent.
    w.start, w.name = start, key .. ':' .. sp.winstr .. ':' .. fmt(start)
  end
  if w.call ~= call_no then
    local j = nstates + 1
    nstates = j
    w.call, w.j = call_no, j
    sname[j], sreset[j] = w.name, win - (now % win)
  end
  return w.j
end

-- Writes every fixed window the call changed, once: a new one with its expiry (SET ... PX,
-- so no key ever lives without one), one that holds hits already by the difference (INCRBY
-- keeps the expiry it was created with: the same end of window), an emptied one deleted.
local function flush()
  for j = 1, nstates do
    local c, o = scount[j], sorig[j]
    if c ~= o then
      if c == 0 then
        redis.call('DEL', sname[j])
      elseif o > 0 then
        redis.call('INCRBY', sname[j], digits(c - o))
      else
        redis.call('SET', sname[j], fmt(c), 'PX', fmt(sreset[j]))
      end
    end
  end
end

-- The general path ----------------------------------------------------------------------

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
-- Its count lives in the call's arrays (window(); a counter of the general path carries
-- its index, c.j); commit writes it there, flush() to Redis.

function fixed.slot(c)
  return sname[c.j]
end

function fixed.load(c)
  local j = c.j
  return {j = j, count = scount[j], reset = sreset[j]}
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
  return state, {j = sim.j, count = after, reset = sim.reset}
end

function fixed.commit(sim)
  scount[sim.j] = sim.count
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

-- Counter i as the general path reads it (a table of its own: run() notes its slot on it).
local function counter(i)
  if not ctab then ctab = {} end
  local c = ctab[i]
  if c then return c end
  local sp = espec[i]
  c = {key = keys_[i], algorithm = sp.algorithm, win = sp.win, limit = sp.limit,
       hits = sp.hits, negative = sp.negative, enforce = sp.enforce,
       capacity = sp.capacity, quota = sp.quota, j = estate[i]}
  ctab[i] = c
  return c
end

-- The general path's request `p` (a shape: see below), its reply appended to out after
-- out[o]; returns the new end.
local function run_general(out, o, p)
  local counters = {}
  for i = 1, p.n do counters[i] = counter(p.ids[i]) end
  local status, states = run(p.mode, counters)
  o = o + 1
  out[o] = status
  for i, s in ipairs(states) do
    if status == 1 and counters[i].algorithm == 'f' then
      out[o + 1] = s.before
      o = o + 1
    else
      out[o + 1], out[o + 2], out[o + 3] = s.before, s.after, s.over and 1 or 0
      out[o + 4], out[o + 5] = s.reset, s.remaining
      o = o + 5
    end
  end
  return o
end

-- The fast path: a request of fixed windows only (the common case). The steps of run()
-- with fixed.decide inlined on the call's arrays and the scratch above: no table, no
-- string, no tonumber per request, and the committed request's reply written as it is
-- decided. Its answers are the general path's, to the letter (the differential test holds
-- both to the memory store's).

-- fixed.decide on a count: over, and the count after.
local function add(c, hits, limit, negative)
  if negative then
    local after = c - hits
    if after < 0 then after = 0 end
    return false, after
  end
  -- A shadow-mode count goes past its limit; it stops at 2^53, where doubles stay exact.
  local after = c + hits
  if after > MAX_EXACT then after = MAX_EXACT end
  return limit == 0 or c + hits > limit, after
end

-- A blocked request of fixed windows (or a dry run), its first pass done (O[i]: each
-- counter's verdict). Quota counters count anyway (not on a dry run), decided again alone,
-- in order, from the counts as stored; the others report the count as stored.
local function blocked_fixed(out, o, p, count_quotas)
  local n, js, sps = p.n, p.js, p.sps
  request_no = request_no + 1
  local rq = request_no
  out[o + 1] = 0
  local k = o + 1
  for i = 1, n do
    local j, sp = js[i], sps[i]
    local before, after, over = scount[j], scount[j], O[i]
    if count_quotas and sp.quota then
      if qgen[j] == rq then before = qc[j] else qgen[j] = rq end
      over, after = add(before, sp.hits, sp.limit, sp.negative)
      qc[j] = after
    end
    local remaining = sp.limit - after
    if remaining < 0 then remaining = 0 end
    out[k + 1], out[k + 2], out[k + 3] = before, after, over and 1 or 0
    out[k + 4], out[k + 5] = sreset[j], remaining
    k = k + 5
  end
  -- Written once all are decided: the others above read the counts as stored.
  if count_quotas then
    for i = 1, n do
      if sps[i].quota then
        local j = js[i]
        scount[j] = qc[j]
      end
    end
  end
  return k
end

-- Any number of fixed windows. Counters of one window see each other's hits (rc, rgen).
local function run_fixed(out, o, p)
  local n, js, sps = p.n, p.js, p.sps
  request_no = request_no + 1
  local rq = request_no
  local over_rule, quotas, quotas_over = false, 0, 0
  for i = 1, n do
    local j, sp = js[i], sps[i]
    local c
    if rgen[j] == rq then c = rc[j] else c = scount[j]; rgen[j] = rq end
    local over, after = add(c, sp.hits, sp.limit, sp.negative)
    rc[j] = after
    -- The committed reply: each counter's `before` after the status (blocked_fixed
    -- writes over it otherwise).
    out[o + 1 + i] = c
    O[i] = over
    if sp.quota then
      quotas = quotas + 1
      if over and sp.enforce then quotas_over = quotas_over + 1 end
    elseif over and sp.enforce then
      over_rule = true
    end
  end
  if p.dry or over_rule or (quotas > 0 and quotas_over == quotas) then
    return blocked_fixed(out, o, p, quotas > 0 and not p.dry)
  end
  out[o + 1] = 1
  for i = 1, n do
    local j = js[i]
    scount[j] = rc[j]
  end
  return o + 1 + n
end

-- The common request of several fixed windows: counted, each counter on a window of its
-- own, none in quota mode. Then a counter's count is its window's (no other counter of the
-- request moves it first), and the request is blocked exactly when one of them is over
-- and enforces.
local function run_plain(out, o, p)
  local n, js, sps = p.n, p.js, p.sps
  local blocked = false
  for i = 1, n do
    local sp = sps[i]
    local c, hits = scount[js[i]], sp.hits
    -- add(), inlined: a Lua call per counter here costs Redis about 200 instructions
    -- (callgrind), a few per cent of this path.
    local after
    if sp.negative then
      after = c - hits
      if after < 0 then after = 0 end
    else
      local limit = sp.limit
      after = c + hits
      if after > MAX_EXACT then after = MAX_EXACT end
      if (limit == 0 or c + hits > limit) and sp.enforce then blocked = true end
    end
    out[o + 1 + i] = c
    rc[i] = after
  end
  if blocked then
    -- Each counter's verdict for blocked_fixed, from the counts still as stored.
    for i = 1, n do
      local sp = sps[i]
      O[i] = (not sp.negative) and (sp.limit == 0 or scount[js[i]] + sp.hits > sp.limit)
    end
    return blocked_fixed(out, o, p, false)
  end
  out[o + 1] = 1
  for i = 1, n do scount[js[i]] = rc[i] end
  return o + 1 + n
end

-- The call ----------------------------------------------------------------------------

-- A request's shape "<mode>,<i>,<j>...", parsed: {mode, dry, n, [1] = i, [2] = j, ...}.
-- Pure, so kept from call to call (parsing one is a few string operations and a tonumber
-- per counter: as much as deciding several requests), bounded as SPECS is.
local SHAPES, shape_count, SHAPES_MAX = {}, 0, 4096

local function parse(s)
  local mode = string.sub(s, 1, 1)
  local t = {mode = mode, dry = mode ~= '0', n = 0}
  local n, pos, len = 0, 2, #s
  while pos < len do
    local comma = string.find(s, ',', pos + 1, true)
    local i = tonumber(string.sub(s, pos + 1, (comma or 0) - 1))
    if not i or i < 1 or i % 1 ~= 0 then error('check_and_count: a bad request shape: ' .. s) end
    n = n + 1
    t[n] = i
    if not comma then break end
    pos = comma
  end
  t.n = n
  if shape_count >= SHAPES_MAX then SHAPES, shape_count = {}, 0 end
  SHAPES[s], shape_count = t, shape_count + 1
  return t
end

-- A request's plan for this call: {mode, dry, n, run = the path it takes, and what that
-- path reads: ids (the shape) for the general path; for fixed windows js and sps, each
-- counter's window and spec; for one fixed window counted (one), its window and spec's
-- fields alone}. `plans` keeps them for the call (requests of one consumer share theirs).
-- Each made whole by one constructor: a table that grows field by field is rebuilt at
-- every power of two.
local function plan(plans, s)
  local t = SHAPES[s] or parse(s)
  local n, fixed_only = t.n, true
  for k = 1, n do
    local i = t[k]
    if i > ncounters then error('check_and_count: a bad request shape: ' .. s) end
    if espec[i].algorithm ~= 'f' then fixed_only = false end
  end
  local p
  if not fixed_only then
    p = {mode = t.mode, dry = t.dry, n = n, run = run_general, ids = t}
  elseif n == 1 and not t.dry then
    -- Decided in the call's loop itself (the commonest request).
    local i = t[1]
    local sp = espec[i]
    p = {mode = t.mode, one = true, j = estate[i], hits = sp.hits, limit = sp.limit,
         negative = sp.negative, enforce = sp.enforce, quota = sp.quota}
  else
    local js, sps = {}, {}
    local run = run_plain
    for k = 1, n do
      local j = estate[t[k]]
      js[k], sps[k] = j, espec[t[k]]
      if t.dry or sps[k].quota then run = run_fixed end
      -- Two counters on one window: each sees the other's hits (run_fixed).
      for m = 1, k - 1 do
        if js[m] == j then run = run_fixed end
      end
    end
    p = {mode = t.mode, dry = t.dry, n = n, run = run, js = js, sps = sps}
  end
  plans[s] = p
  return p
end

-- Every request in order, each on its own.
local function check_and_count(keys, args)
  clock()
  -- The call's state (library state outlives a call: nothing of the last one is kept, even
  -- if it stopped on an error).
  local E = tonumber(args[1])
  call_no = call_no + 1
  keys_, ctab, ncounters, nstates = keys, nil, E, 0
  if names_count > NAMES_MAX then NAMES, names_count = {}, 0 end
  -- Each counter's spec and, for a fixed window, its window; then every window read at
  -- once (an MGET, in slices: unpack has a bound).
  for i = 1, E do
    local sp = spec(args[1 + i])
    espec[i] = sp
    if sp.algorithm == 'f' then estate[i] = window(keys[i], sp) end
  end
  if nstates == 1 then
    -- One window (a call of one consumer's requests): a GET, without MGET's table.
    local v = tonumber(redis.call('GET', sname[1]) or '0')
    sorig[1], scount[1] = v, v
  else
    for from = 1, nstates, 512 do
      local to = math.min(nstates, from + 511)
      local got = redis.call('MGET', unpack(sname, from, to))
      for j = from, to do
        local v = tonumber(got[j - from + 1] or '0')
        sorig[j], scount[j] = v, v
      end
    end
  end

  local out, o, a, nargs = {now}, 1, 1 + E, #args
  local plans, deadlines = {}, {}
  while a < nargs do
    local s, d = args[a + 1], args[a + 2]
    a = a + 2
    local p = plans[s] or plan(plans, s)
    local late = deadlines[d]
    if late == nil then
      local deadline = tonumber(d)
      late = deadline > 0 and now >= deadline
      deadlines[d] = late
    end
    if late then
      o = o + 1
      out[o] = 2
    elseif p.one then
      -- One fixed window, counted: run_fixed inlined, as this request is the commonest. It
      -- is blocked exactly when it is over and enforces (a quota counter alone is all the
      -- request's quota counters).
      local j, hits, limit = p.j, p.hits, p.limit
      local c = scount[j]
      -- add(), inlined, as in run_plain.
      local over, after
      if p.negative then
        over = false
        after = c - hits
        if after < 0 then after = 0 end
      else
        over = limit == 0 or c + hits > limit
        after = c + hits
        if after > MAX_EXACT then after = MAX_EXACT end
      end
      if over and p.enforce then
        -- Blocked; a quota counter counts anyway.
        if p.quota then scount[j] = after else after = c end
        local remaining = limit - after
        if remaining < 0 then remaining = 0 end
        out[o + 1], out[o + 2], out[o + 3] = 0, c, after
        out[o + 4], out[o + 5], out[o + 6] = 1, sreset[j], remaining
        o = o + 6
      else
        scount[j] = after
        out[o + 1], out[o + 2] = 1, c
        o = o + 2
      end
    else
      if p.mode == '2' then redis.call('SET', keys[E + 1], '', 'XX') end
      o = p.run(out, o, p)
    end
  end
  flush()
  return out
end
