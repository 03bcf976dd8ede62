-- Put before each queue script. KEYS are one queue's keys, all in one cluster slot ({name}):
--   1 stream    the entries, read by the consumer group 'workers'
--   2 keys      hash: idempotency key -> id of its queued entry
--   3 done      zset: idempotency key -> until when it counts as handled
--   4 attempts  hash: id -> deliveries so far
--   5 errors    hash: 'f:'..id / 'l:'..id -> JSON [error, at] of its first / last failure
--   6 dead      hash: id -> dead letter (JSON, every value a string but the attempts)
--   7 counts    hash: 'expired' -> entries dropped past their TTL
--   8 later     zset: id -> when it is due (a retry backing off, a delayed put)
-- Times ('now', due, done, TTL) are the caller's seconds; leases are the server's idle times.
local STREAM, QKEYS, DONE, ATTEMPTS, ERRORS, DEAD, COUNTS, LATER =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local GROUP = 'workers'

local function fieldmap(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- Every trace of entry id but a dead letter (key: its idempotency key, if known).
local function forget(id, key)
  redis.call('XACK', STREAM, GROUP, id)
  redis.call('XDEL', STREAM, id)
  redis.call('HDEL', ATTEMPTS, id)
  redis.call('HDEL', ERRORS, 'f:' .. id, 'l:' .. id)
  redis.call('ZREM', LATER, id)
  if key and redis.call('HGET', QKEYS, key) == id then redis.call('HDEL', QKEYS, key) end
end

-- Move entry id to the dead letters; err is the JSON [error, at] of the failure that ends it.
local function bury(id, f, attempts, err, now)
  local first = redis.call('HGET', ERRORS, 'f:' .. id) or err
  redis.call('HSET', DEAD, id, cjson.encode({
    id = id, k = f.k, h = f.h, a = f.a, r = f.r, e = f.e, x = f.x,
    n = attempts, f = first, l = err, d = now,
  }))
  forget(id, f.k)
end

-- Hand entry id (pending) to owner with its lease running out in wait_ms (at most a lease).
local function due_in(id, owner, lease_ms, wait_ms)
  local idle = lease_ms - wait_ms
  if idle < 0 then idle = 0 end
  redis.call('XCLAIM', STREAM, GROUP, owner, 0, id, 'IDLE', idle, 'JUSTID')
end

local function is_error(reply, kind)
  return type(reply) == 'table' and reply.err ~= nil
    and (kind == nil or string.sub(reply.err, 1, #kind) == kind)
end

-- The consumer holding entry id, or nil (not pending, or no group: a server that lost it).
local function holder(id)
  local p = redis.pcall('XPENDING', STREAM, GROUP, id, id, 1)
  if is_error(p) or not p[1] then return nil end
  return p[1][2]
end
