-- Handled: remember the key as done until `until`, drop the entry. Needs prelude.lua.
-- ARGV: id, key, until, now.
redis.call('ZADD', DONE, ARGV[3], ARGV[2])
forget(ARGV[1], nil)
redis.call('ZREMRANGEBYSCORE', DONE, '-inf', ARGV[4])
return 1
