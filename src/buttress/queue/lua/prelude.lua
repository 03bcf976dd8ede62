-- Put before each queue script. KEYS are one queue's keys, all in one cluster slot ({name}):
--   1 stream    the entries, read by the consumer group 'workers'
--   2 keys      hash: idempotency key -> id of its queued entry
--   3 done      zset: idempotency key -> until when it counts as handled
--   4 attempts  hash: id -> deliveries so far
--   5 errors    hash: 'f:'..id / 'l:'..id -> JSON [error, at] of its first / last failure
--   6 dead      hash: id -> dead letter (JSON, every value a string but the attempts)
--   7 counts    hash: 'expired' -> entries dropped past their TTL
--   8 later     zset: id -> when it is due (a retry backing off, a delayed put; +inf: waiting
--               for the entries of its resource before it, -inf: due whatever the clock says)
--   9 lines     zset, all scores 0: '<length>:<resource>:<padded id>', each resource's entries
--               in order (the first is the resource's head, the only one that may be delivered)
-- Times ('now', due, done, TTL) are the caller's seconds; leases are the server's idle times.
local STREAM, QKEYS, DONE, ATTEMPTS, ERRORS, DEAD, COUNTS, LATER, LINES =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local GROUP = 'workers'

local function fieldmap(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

local function is_error(reply, kind)
  return type(reply) == 'table' and reply.err ~= nil
    and (kind == nil or string.sub(reply.err, 1, #kind) == kind)
end

local function pad(digits)
  return string.rep('0', 20 - #digits) .. digits
end

local function line_prefix(resource)
  return #resource .. ':' .. resource .. ':'
end

-- The member of `lines` for entry id of resource: sorts by resource, then by id.
local function line(resource, id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return line_prefix(resource) .. pad(ms) .. '-' .. pad(seq)
end

-- The id of the oldest entry of resource, or nil.
local function head(resource)
  local prefix = line_prefix(resource)
  while true do
    local first = redis.call('ZRANGEBYLEX', LINES, '[' .. prefix, '[' .. prefix .. '\255',
      'LIMIT', 0, 1)[1]
    if not first then return nil end
    local ms, seq = string.match(string.sub(first, #prefix + 1), '^0*(%d+)-0*(%d+)$')
    local id = ms .. '-' .. seq
    if redis.call('XRANGE', STREAM, id, id)[1] then return id end
    redis.call('ZREM', LINES, first)  -- (an entry deleted by someone else)
  end
end

local function is_inf(score)
  return score == 'inf' or score == '+inf'
end

-- Every trace of entry id but a dead letter (f: its fields, read here when nil); the next
-- entry of its resource, if it was waiting for this one, is due at once.
local function forget(id, f)
  if not f then
    local entry = redis.call('XRANGE', STREAM, id, id)[1]
    f = entry and fieldmap(entry[2]) or {}
  end
  redis.call('XACK', STREAM, GROUP, id)
  redis.call('XDEL', STREAM, id)
  redis.call('HDEL', ATTEMPTS, id)
  redis.call('HDEL', ERRORS, 'f:' .. id, 'l:' .. id)
  redis.call('ZREM', LATER, id)
  if f.k and redis.call('HGET', QKEYS, f.k) == id then redis.call('HDEL', QKEYS, f.k) end
  if f.r and f.r ~= '' then
    redis.call('ZREM', LINES, line(f.r, id))
    local next_id = head(f.r)
    if next_id and is_inf(redis.call('ZSCORE', LATER, next_id)) then
      redis.call('ZADD', LATER, '-inf', next_id)
    end
  end
end

-- Move entry id to the dead letters; err is the JSON [error, at] of the failure that ends it.
local function bury(id, f, attempts, err, now)
  local first = redis.call('HGET', ERRORS, 'f:' .. id) or err
  redis.call('HSET', DEAD, id, cjson.encode({
    id = id, k = f.k, h = f.h, a = f.a, r = f.r, e = f.e, x = f.x,
    n = attempts, f = first, l = err, d = now,
  }))
  forget(id, f)
end

-- Hand entry id (pending) to owner with its lease running out in wait_ms (at most a lease).
local function due_in(id, owner, lease_ms, wait_ms)
  local idle = lease_ms - wait_ms
  if idle < 0 then idle = 0 end
  redis.call('XCLAIM', STREAM, GROUP, owner, 0, id, 'IDLE', idle, 'JUSTID')
end

-- The consumer holding entry id, or nil (not pending, or no group: a server that lost it).
local function holder(id)
  local p = redis.pcall('XPENDING', STREAM, GROUP, id, id, 1)
  if is_error(p) or not p[1] then return nil end
  return p[1][2]
end
