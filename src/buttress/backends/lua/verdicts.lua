-- Read the unexpired verdicts of a space. Needs prelude.lua.
--
-- KEYS[1]: the space's hash (see verdict.lua). ARGV[1]: now ('' = the server's clock).
-- Returns a flat list: key, record, seconds left, key, record, seconds left...
local now = clock(ARGV[1])
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local v = all[i + 1]
  local bar = string.find(v, '|', 1, true)
  local bar2 = bar and string.find(v, '|', bar + 1, true)
  if bar2 then
    local expires = tonumber(string.sub(v, 1, bar - 1))
    if expires and expires > now then
      out[#out + 1] = all[i]
      out[#out + 1] = string.sub(v, bar2 + 1)
      out[#out + 1] = fmt(expires - now)
    end
  end
end
return out
