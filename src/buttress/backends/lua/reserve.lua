-- One rate-limit decision: buttress.machines.ratelimit.reserve (all four algorithms, the same
-- arithmetic in the same order), after any block on the key. Needs prelude.lua.
--
-- KEYS[1]: the state.
-- ARGV: tag, interval, burst, window, limit, cost, max_wait, now ('' = the server's TIME).
-- Returns {1, wait} when admitted after `wait` seconds, {0, retry_after} when refused.
local key = KEYS[1]
local tag = ARGV[1]
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local cost = tonumber(ARGV[6])
local max_wait = num(ARGV[7])
local now = clock(ARGV[8])
local EPSILON = 1e-9

if tag ~= 'S' then
  -- The buckets and the fixed window: a string "<tag>|<a>|<b>|<until>", read with one GET and
  -- written with one SET that also sets the expiry.
  local raw = redis.pcall('GET', key)
  local a, b, till = nil, nil, nil
  if type(raw) == 'string' then
    local t, x, y, u = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if not t then return bad_state('value', raw) end
    till = tonumber(u)
    if u ~= '' and bad_time(till, now) then return bad_state('block end', u) end
    if t == tag then
      a, b = tonumber(x), tonumber(y)
      if x ~= '' and bad_time(a, now) then return bad_state('time', x) end
      if y ~= '' and bad_time(b, now) then return bad_state('count', y) end
    end
  end
  -- (a list here is a sliding window's log: another algorithm's state, which counts as none)
  if till then
    if now < till then return {0, fmt(till - now)} end
  end
  local function admit(x, y, wait, fresh_at)
    redis.call('SET', key, tag .. '|' .. x .. '|' .. y .. '|', 'PX', ms(fresh_at - now))
    if wait <= 0 then return {1, '0'} end
    return {1, fmt(wait)}
  end
  if tag == 'T' or tag == 'L' then
    local tat = now
    if a and a > now then tat = a end
    if tag == 'T' then
      local new_tat = tat + cost * interval
      local wait = new_tat - burst * interval - now
      if wait <= max_wait + EPSILON then
        return admit(fmt(new_tat), '', wait, new_tat)
      end
      return {0, fmt(wait)}
    end
    local wait = tat - now
    if wait <= math.min(max_wait, burst * interval) + EPSILON then
      local next_slot = tat + cost * interval
      return admit(fmt(next_slot), '', wait, next_slot)
    end
    return {0, fmt(wait)}
  end
  -- 'F'
  local start, count = now, 0
  if a and b and now < a + window then
    start, count = a, b
  end
  if count + cost > limit then
    start, count = start + window, 0
  end
  local wait = start - now
  if wait < 0 then wait = 0 end
  if wait <= max_wait + EPSILON then
    return admit(fmt(start), fmt(count + cost), wait, start + window)
  end
  return {0, fmt(wait)}
end

-- 'S': the sliding window log, a list: element 0 is the header ("S", or "S|<until>" while a
-- block is recorded), then the admission times, oldest first, at most `limit` of them.
local head = redis.pcall('LRANGE', key, 0, 0)
if head.err then
  -- a string: another algorithm's state (none for this one), or a block set on a fresh key
  local u = string.match(redis.call('GET', key), '|([^|]*)$')
  local till = tonumber(u)
  if u and u ~= '' and bad_time(till, now) then return bad_state('block end', u) end
  if till and now < till then
    return {0, fmt(till - now)}
  end
  redis.call('DEL', key)
  head = {}
end
local header = head[1]
local held = false
if header then
  local htag, till = split(header)
  if string.find(header, '|', 1, true) and bad_time(till, now) then
    return bad_state('block end in', header)
  end
  if till and now < till then
    return {0, fmt(till - now)}
  end
  held = (htag == tag)
end
local n = 0
if held then n = redis.call('LLEN', key) - 1 end
local slot = now
if n > 0 then
  local text = redis.call('LINDEX', key, -1)
  local newest = tonumber(text)
  if bad_time(newest, now) then return bad_state('time', text) end
  if newest > slot then slot = newest end
end
-- The admission `need` places back must have left the window; in a log of n <= limit entries it
-- sits at list index n - need + 1 <= cost, near the head.
local need = limit - cost + 1
if need <= n then
  local text = redis.call('LINDEX', key, n - need + 1)
  local back = tonumber(text)
  if bad_time(back, now) then return bad_state('time', text) end
  if back > now - window and back + window > slot then slot = back + window end
end
local wait = slot - now
if wait > max_wait + EPSILON then
  return {0, fmt(wait)}
end
local entry = fmt(slot)
if not held then
  redis.call('DEL', key)
  redis.call('RPUSH', key, tag)
elseif header ~= tag then
  redis.call('LSET', key, 0, tag)
end
local batch = {}
for i = 1, cost do
  batch[#batch + 1] = entry
  if #batch == 1000 or i == cost then
    redis.call('RPUSH', key, unpack(batch))
    batch = {}
  end
end
local extra = n + cost - limit
if extra > 0 then
  -- drop the header and the `extra` oldest entries, then put the header back
  redis.call('LTRIM', key, extra + 1, -1)
  redis.call('LPUSH', key, tag)
end
redis.call('PEXPIRE', key, ms(slot + window - now))
if wait <= 0 then return {1, '0'} end
return {1, fmt(wait)}
