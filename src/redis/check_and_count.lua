-- Checks every counter of a request, then counts all of them or none
-- (limits-format.md §4). One call is one atomic step on the Redis server.
--
-- KEYS[i]   a counter key without its window (all KEYS of one call share a hash tag)
-- ARGV[1]   "1": dry run, count nothing
-- ARGV[2 + 5(i-1) ...] for counter i:
--           window length in ms, limit, hits, negative ("1"/"0"), enforce ("1"/"0")
--
-- Windows come from this server's clock (TIME), so replicas with skewed clocks agree.
-- A window's counter is KEYS[i]:<window ms>:<window start ms>; it is written with SET ... PX
-- in the same step that creates it, so no counter ever lives without an expiry.
--
-- Returns {now_ms, committed (0/1), then per counter: before, after, over (0/1), reset_ms}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local blocked = ARGV[1] == '1'
local names, stored, counts, ttl = {}, {}, {}, {}
local out = {now, 0}

for i = 1, #KEYS do
  local a = 2 + (i - 1) * 5
  local win = tonumber(ARGV[a])
  local limit = tonumber(ARGV[a + 1])
  local hits = tonumber(ARGV[a + 2])
  local negative = ARGV[a + 3] == '1'
  local start = now - (now % win)
  local name = KEYS[i] .. ':' .. string.format('%d', win) .. ':' .. string.format('%d', start)
  names[i] = name
  if stored[name] == nil then
    stored[name] = tonumber(redis.call('GET', name) or '0')
    counts[name] = stored[name]
    ttl[name] = start + win - now
  end
  -- Counters sharing a key within one request add up, in order.
  local before = counts[name]
  local over = (not negative) and (limit == 0 or before + hits > limit)
  if over and ARGV[a + 4] == '1' then
    blocked = true
  end
  local after = before + hits
  if negative then
    after = math.max(before - hits, 0)
  end
  counts[name] = after
  out[#out + 1] = before
  out[#out + 1] = after
  out[#out + 1] = over and 1 or 0
  out[#out + 1] = ttl[name]
end

if blocked then
  -- Nothing is counted: report what is stored.
  for i = 1, #KEYS do
    local s = stored[names[i]]
    out[3 + (i - 1) * 4] = s
    out[4 + (i - 1) * 4] = s
  end
  return out
end

out[2] = 1
for name, count in pairs(counts) do
  if count ~= stored[name] then
    if count == 0 then
      redis.call('DEL', name)
    else
      redis.call('SET', name, string.format('%d', count), 'PX', ttl[name])
    end
  end
end
return out
