-- A block on a rate-limit key (a server said "come back later"). Needs prelude.lua.
--
-- KEYS[1]: the state. ARGV: seconds, now ('' = the server's TIME).
-- Records "refused until now + seconds" unless a later block is already recorded.
local key = KEYS[1]
local seconds = tonumber(ARGV[1])
local now = clock(ARGV[2])
local till = now + seconds
local keep = ms(seconds)
local pttl = redis.call('PTTL', key)
if pttl > keep then keep = pttl end
local raw = redis.pcall('GET', key)
if type(raw) == 'string' then
  local t, x, y, u = string.match(raw, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if not t then return bad_state('value', raw) end
  local old = tonumber(u)
  if u ~= '' and bad_time(old, now) then return bad_state('block end', u) end
  if old and till <= old then return 0 end
  redis.call('SET', key, (t or '') .. '|' .. (x or '') .. '|' .. (y or '') .. '|' .. fmt(till),
    'PX', keep)
  return 1
end
if raw == false then
  redis.call('SET', key, '|||' .. fmt(till), 'PX', keep)
  return 1
end
-- a sliding window's log: the block goes into its header
local header = redis.call('LINDEX', key, 0)
local tag, old = split(header)
if string.find(header, '|', 1, true) and bad_time(old, now) then
  return bad_state('block end in', header)
end
if old and till <= old then return 0 end
redis.call('LSET', key, 0, tag .. '|' .. fmt(till))
redis.call('PEXPIRE', key, keep)
return 1
