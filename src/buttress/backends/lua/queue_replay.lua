-- End every backoff and delay now: the entries become claimable at once. Needs
-- queue_prelude.lua. ARGV: lease (ms). Returns how many were waiting.
local ids = redis.call('ZRANGE', LATER, 0, -1)
for _, id in ipairs(ids) do
  local who = holder(id)
  if who then redis.call('XCLAIM', STREAM, GROUP, who, 0, id, 'IDLE', ARGV[1], 'JUSTID') end
end
redis.call('DEL', LATER)
return #ids
