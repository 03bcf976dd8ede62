-- End every backoff and delay: the entries are due at once (those waiting for older entries of
-- their resource keep waiting). Needs prelude.lua. ARGV: now.
-- Returns how many were due later.
local ids = redis.call('ZRANGEBYSCORE', LATER, '-inf', '(inf')
local count = redis.call('ZCOUNT', LATER, '(' .. ARGV[1], '(inf')
for _, id in ipairs(ids) do redis.call('ZADD', LATER, '-inf', id) end
return count
