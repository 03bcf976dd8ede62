-- Counts. Needs prelude.lua. ARGV: now.
-- Returns {entries, in flight, delayed, dead, expired, done}: an entry is in flight when it is
-- pending and not waiting in `later`, delayed when it waits there for a time still to come.
local now = tonumber(ARGV[1])
local pending = redis.pcall('XPENDING', STREAM, GROUP)
if is_error(pending) then pending = {0} end
local in_flight, delayed = pending[1], 0
local waits = redis.call('ZRANGE', LATER, 0, -1, 'WITHSCORES')
for i = 1, #waits, 2 do
  if holder(waits[i]) then in_flight = in_flight - 1 end
  local score = waits[i + 1]
  if not is_inf(score) and tonumber(score) > now then delayed = delayed + 1 end
end
return {
  redis.call('XLEN', STREAM),
  in_flight,
  delayed,
  redis.call('HLEN', DEAD),
  tonumber(redis.call('HGET', COUNTS, 'expired')) or 0,
  redis.call('ZCOUNT', DONE, '(' .. ARGV[1], '+inf'),
}
