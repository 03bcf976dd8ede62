-- Read entries without claiming them. Needs prelude.lua. ARGV: start, end, count.
-- Returns {{id, fields, attempts, first error, last error}...}.
local out = {}
for _, entry in ipairs(redis.call('XRANGE', STREAM, ARGV[1], ARGV[2], 'COUNT', ARGV[3])) do
  local id = entry[1]
  out[#out + 1] = {id, entry[2], tonumber(redis.call('HGET', ATTEMPTS, id)) or 0,
    redis.call('HGET', ERRORS, 'f:' .. id), redis.call('HGET', ERRORS, 'l:' .. id)}
end
return out
