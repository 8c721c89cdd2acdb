-- Shared by check_and_count.lua and give_back.lua (each script is this file followed by
-- its own text: see src/redis/script.rs; on a single node the library of Redis Functions is
-- this file and check_and_count.lua, loaded once): the server's clock, integer helpers, and
-- where and how each algorithm keeps its state.
--
-- Time is this server's clock (TIME), so replicas with skewed clocks agree. State, each
-- written in the step that creates it with an expiry (PX), so nothing lives forever:
--   <key>:<window>:<window start>  fixed window: the count
--   <key>:<window>:l               sliding window: a list, newest first, one element per
--                                  admit time: "<at>:<total>:<hits>", the time (ms), the
--                                  hits admitted then, and the running total of hits logged
--                                  up to and including them (mod 2^52); expires when the
--                                  newest leaves the window
--   <key>:<window>:b               token bucket (GCRA): "<debt> <at>", the theoretical
--                                  arrival time's lead over `at`, in 1/<window> of a token:
--                                  a hit adds <window>, each ms pays back <limit>; expires
--                                  when paid off (the bucket is full again)
-- The last component (digits, "l" or "b") keeps algorithms and windows apart: a rule whose
-- algorithm changes never reads another algorithm's state.
--
-- Lua numbers are doubles: every quantity stays an exact integer below 2^53 (the service
-- bounds windows, limits, hits and a bucket's capacity × window by it).
--
-- The sliding log's shape follows from bounded cost (docs/algorithms.md): its state and
-- every call's work must not grow with hits_addend. One element per admit time (calls in
-- one ms share it) bounds the state by the admitting calls in the window. The running total
-- makes the hits in the window one subtraction (the newest total minus the total before the
-- oldest live element) and the element holding the k-th oldest hit a search on totals;
-- times are ordered, so the expired elements are a suffix, found by a search on times and
-- dropped with one LTRIM. Searches gallop from the nearer end (LINDEX costs the distance
-- from an end), so their cost grows with what they skip, not with the log's length.
-- Measured on Redis 7.0 against a sorted set (score = time) for 500 000 elements: the list
-- of real entries (13-digit times, running totals) takes about 12 MB to the sorted set's
-- 44 MB, and LTRIM of 400 000 expired elements under 0.3 ms to
-- ZREMRANGEBYSCORE's 173 ms (a sorted set frees every member one by one); a rank lookup in
-- the middle is 25 us there, 88 us here, and galloping rarely goes far. Totals wrap at 2^52:
-- only differences within one log (at most limit + 1 hits, far below) are read, so they
-- stay exact however long a busy log lives.

-- The server's clock, read once per call by clock(): a library of functions runs this
-- file once, when it is loaded (where TIME may not be called), and its functions many times.
local now = 0
local function clock()
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
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

-- floor(a / b) for non-negative integers, b > 0, exact.
local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 end
  if (q + 1) * b <= a then q = q + 1 end
  return q
end

-- One table per algorithm, named as the modules of src/limiter/memory.rs.
local fixed, sliding, bucket = {}, {}, {}

-- The window containing `at`.
function fixed.name(key, win, at)
  return key .. ':' .. fmt(win) .. ':' .. fmt(at - (at % win))
end

function sliding.name(key, win)
  return key .. ':' .. fmt(win) .. ':l'
end

local TOTAL_MOD = 4503599627370496 -- 2^52

function sliding.parse(v)
  local a = string.find(v, ':', 1, true)
  local b = string.find(v, ':', a + 1, true)
  return {at = tonumber(string.sub(v, 1, a - 1)), total = tonumber(string.sub(v, a + 1, b - 1)),
          hits = tonumber(string.sub(v, b + 1))}
end

function sliding.format(e)
  return fmt(e.at) .. ':' .. fmt(e.total) .. ':' .. fmt(e.hits)
end

-- The element at position p of a log of n elements, counted from the oldest (0), read from
-- the nearer end; with its position.
function sliding.at(name, n, p)
  local index = -(p + 1)
  if p >= n / 2 then index = n - 1 - p end
  local e = sliding.parse(redis.call('LINDEX', name, index))
  e.pos = p
  return e
end

-- The smallest p in [lo, hi] where test(p) holds, for a test that is false, then true, and
-- holds at hi. Probes lo, lo + 1, lo + 3, lo + 7, ... then bisects: the cost grows with the
-- distance from lo, not with the length of the range.
function sliding.gallop(lo, hi, test)
  local prev, step, probe = lo - 1, 1, lo
  while probe < hi and not test(probe) do
    prev = probe
    step = step * 2
    probe = math.min(hi, prev + step)
  end
  local a, b = prev + 1, probe
  while a < b do
    local mid = math.floor((a + b) / 2)
    if test(mid) then b = mid else a = mid + 1 end
  end
  return a
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

-- The stored debt drained to now at `limit` per ms (exact: the product is only formed
-- when it is below the debt).
function bucket.debt_now(name, limit)
  local debt, at = bucket.read(name)
  if not debt then return 0 end
  if limit == 0 then return debt end
  local elapsed = math.max(0, now - at)
  if elapsed >= ceil_div(debt, limit) then return 0 end
  return debt - elapsed * limit
end

-- Writes a debt at now; a paid-off bucket holds no state.
function bucket.write(name, debt, limit, win)
  if debt <= 0 then
    redis.call('DEL', name)
  else
    local ttl = win
    if limit > 0 then ttl = ceil_div(debt, limit) end
    redis.call('SET', name, fmt(debt) .. ' ' .. fmt(now), 'PX', fmt(math.max(1, ttl)))
  end
end
