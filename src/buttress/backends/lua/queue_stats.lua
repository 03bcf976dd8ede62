-- Counts. Needs queue_prelude.lua. ARGV: now.
-- Returns {entries, pending, backing off or delayed, of which due later, dead, expired, done}.
local pending = redis.pcall('XPENDING', STREAM, GROUP)
if is_error(pending) then pending = {0} end
return {
  redis.call('XLEN', STREAM),
  pending[1],
  redis.call('ZCARD', LATER),
  redis.call('ZCOUNT', LATER, '(' .. ARGV[1], '+inf'),
  redis.call('HLEN', DEAD),
  tonumber(redis.call('HGET', COUNTS, 'expired')) or 0,
  redis.call('ZCOUNT', DONE, '(' .. ARGV[1], '+inf'),
}
