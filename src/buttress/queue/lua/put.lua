-- Enqueue unless the key is queued or done, or the stream is full. Needs prelude.lua.
-- ARGV: key, now, max depth (0: none), due time, then the entry's fields.
-- Returns {id, 1} (added), {id of the queued entry, 0}, {'0', 0} (done) or {'-1', 0} (full).
local key, now = ARGV[1], tonumber(ARGV[2])
local queued = redis.call('HGET', QKEYS, key)
if queued and redis.call('XRANGE', STREAM, queued, queued)[1] then return {queued, 0} end
local done_until = tonumber(redis.call('ZSCORE', DONE, key))
if done_until and done_until > now then return {'0', 0} end
local depth = tonumber(ARGV[3])
if depth > 0 and redis.call('XLEN', STREAM) >= depth then return {'-1', 0} end
local id = redis.call('XADD', STREAM, '*', unpack(ARGV, 5))
redis.call('HSET', QKEYS, key, id)
local f = fieldmap({unpack(ARGV, 5)})
if f.r ~= '' then redis.call('ZADD', LINES, 0, line(f.r, id)) end
if tonumber(ARGV[4]) > now then redis.call('ZADD', LATER, ARGV[4], id) end
return {id, 1}
