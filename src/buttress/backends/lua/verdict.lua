-- Publish resource verdicts into a space. Needs prelude.lua.
--
-- KEYS[1]: the space's hash (resource key -> '<expires>|<at>|<record>'). ARGV[1]: now ('' = the
-- server's clock), then per verdict: key, record, at (when its reading was taken), ttl. A stored
-- verdict that is still valid and newer (a later at) is kept: a late publisher never overwrites a
-- fresher reading. Expired verdicts are swept, and the hash lives as long as its last verdict.
local now = clock(ARGV[1])

local function parts(v)
  local bar = string.find(v, '|', 1, true)
  if not bar then return nil end
  local bar2 = string.find(v, '|', bar + 1, true)
  if not bar2 then return nil end
  return tonumber(string.sub(v, 1, bar - 1)), tonumber(string.sub(v, bar + 1, bar2 - 1)), bar2
end

for i = 2, #ARGV, 4 do
  local at = num(ARGV[i + 2])
  local keep = false
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local expires, old_at = parts(old)
    keep = expires ~= nil and old_at ~= nil and expires > now and old_at > at
  end
  if not keep then
    local value = fmt(now + num(ARGV[i + 3])) .. '|' .. fmt(at) .. '|' .. ARGV[i + 1]
    redis.call('HSET', KEYS[1], ARGV[i], value)
  end
end

local latest = now
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local expires = parts(all[i + 1])
  if expires == nil or expires <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif expires > latest then
    latest = expires
  end
end
if latest > now then redis.call('PEXPIRE', KEYS[1], ms(latest - now)) end
return 1
