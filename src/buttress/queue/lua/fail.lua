-- A delivery failed. Needs prelude.lua. ARGV: id, owner, JSON [error, at], now,
-- due time ('' = out of attempts: to the dead letters), lease (ms).
-- Returns 'retry', 'dead' or 'lost' (owner no longer holds the entry).
local id, owner, err, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if holder(id) ~= owner or redis.call('ZSCORE', LATER, id) then return 'lost' end
local entry = redis.call('XRANGE', STREAM, id, id)[1]
if not entry then
  forget(id, nil)
  return 'lost'
end
if ARGV[5] == '' then
  bury(id, fieldmap(entry[2]), tonumber(redis.call('HGET', ATTEMPTS, id)) or 0, err, now)
  return 'dead'
end
redis.call('HSETNX', ERRORS, 'f:' .. id, err)
redis.call('HSET', ERRORS, 'l:' .. id, err)
redis.call('ZADD', LATER, ARGV[5], id)
due_in(id, owner, tonumber(ARGV[6]), math.ceil((tonumber(ARGV[5]) - tonumber(now)) * 1000))
return 'retry'
