-- Compare-and-set of one target state of a pool. Needs prelude.lua.
--
-- KEYS[1]: the pool's hash (target name -> JSON state). ARGV: name, old ('' = no state yet), new.
-- Returns {1, new} when the state was old and is now new, else {0, current} (current false when
-- there is no state): the caller re-reads nothing, it retries on current.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (current or '') == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return {1, ARGV[3]}
end
return {0, current}
