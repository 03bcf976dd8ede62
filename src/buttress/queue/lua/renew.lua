-- Heartbeat: reset the idle time (the lease) of the entries `owner` still holds, and only those.
-- Needs prelude.lua. ARGV: owner, id... Returns the ids renewed.
local owner, held = ARGV[1], {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if holder(id) == owner and not redis.call('ZSCORE', LATER, id) then
    redis.call('XCLAIM', STREAM, GROUP, owner, 0, id, 'IDLE', 0, 'JUSTID')
    held[#held + 1] = id
  end
end
return held
