-- Claim up to `limit` entries for `owner`: first retries now due; when none is, one entry whose
-- lease ran out (XAUTOCLAIM, paging through the pending list from `cursor`), alone: its worker
-- died holding it, perhaps because of it; else new ones (XREADGROUP).
-- Needs prelude.lua.
-- ARGV: owner, lease (ms), limit, max attempts, now, cursor, pages, JSON [error, at] for an entry
-- whose worker stopped once too often.
-- Returns {cursor, skipped, expired, dead, {{id, fields, attempts, first error, last error}...}}.
local owner, lease = ARGV[1], tonumber(ARGV[2])
local limit, max_attempts, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cursor, pages, stopped = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local got = {}

local function no_group(reply)
  if not is_error(reply) then return false end
  if not is_error(reply, 'NOGROUP') then error(reply.err) end
  redis.call('XGROUP', 'CREATE', STREAM, GROUP, '0', 'MKSTREAM')
  return true
end

-- retries and delays now due, by the caller's clock: nobody holds a lease on them
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LATER, '-inf', now, 'LIMIT', 0, limit)) do
  local reply = redis.pcall('XCLAIM', STREAM, GROUP, owner, 0, id)
  if not is_error(reply) and reply[1] and reply[1][2] then got[#got + 1] = reply[1] end
end  -- (an id not yet delivered stays: XREADGROUP delivers it)
local taken = {}
for _, entry in ipairs(got) do taken[entry[1]] = true end

local alone = false
for _ = 1, pages do
  if #got > 0 then break end
  local reply = redis.pcall('XAUTOCLAIM', STREAM, GROUP, owner, lease, cursor, 'COUNT', 1)
  if no_group(reply) then cursor = '0-0' break end
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    local due = entry[2] and redis.call('ZSCORE', LATER, entry[1])
    due = due and (is_inf(due) and math.huge or tonumber(due))
    if not entry[2] then
      forget(entry[1], nil)  -- (6.2: deleted)
    elseif due and due > now then
      due_in(entry[1], owner, lease, math.ceil((due - now) * 1000))  -- a retry not yet due
    elseif not taken[entry[1]] then
      got[#got + 1] = entry
      alone = true
    end
  end
  for _, id in ipairs(reply[3] or {}) do forget(id, nil) end  -- (7: deleted, out of the list)
  if cursor == '0-0' then break end
end
if not alone and #got < limit then
  local args = {'XREADGROUP', 'GROUP', GROUP, owner, 'COUNT', limit - #got, 'STREAMS', STREAM, '>'}
  local reply = redis.pcall(unpack(args))
  if no_group(reply) then reply = redis.call(unpack(args)) end
  if reply then
    for _, entry in ipairs(reply[1][2]) do got[#got + 1] = entry end
  end
end

local out, skipped, expired, dead = {}, 0, 0, 0
for _, entry in ipairs(got) do
  local id, f = entry[1], fieldmap(entry[2])
  local due = redis.call('ZSCORE', LATER, id)
  due = due and (is_inf(due) and math.huge or tonumber(due))
  -- (an entry written by something else may lack a field or hold a non-number: it is delivered,
  -- and the caller, finding it cannot decode it, sends it to the dead letters)
  local expires = f.x and f.x ~= '' and tonumber(f.x)
  if due and due > now then
    due_in(id, owner, lease, math.ceil((due - now) * 1000))  -- not yet: back in a while
  elseif expires and expires <= now then
    forget(id, f)
    expired = expired + 1
  elseif f.k and (tonumber(redis.call('ZSCORE', DONE, f.k)) or -1 / 0) > now then
    forget(id, f)
    skipped = skipped + 1
  elseif f.r and f.r ~= '' and head(f.r) ~= id then
    -- its resource's older entries go first: it waits, out of the way, until forget() of the
    -- one before it makes it due
    redis.call('ZADD', LATER, 'inf', id)
    due_in(id, owner, lease, lease)
  else
    local n = redis.call('HINCRBY', ATTEMPTS, id, 1)
    if n > max_attempts then
      bury(id, f, n - 1, stopped, ARGV[5])
      dead = dead + 1
    else
      if due then redis.call('ZREM', LATER, id) end
      out[#out + 1] = {id, entry[2], n, redis.call('HGET', ERRORS, 'f:' .. id),
        redis.call('HGET', ERRORS, 'l:' .. id)}
    end
  end
end
if expired > 0 then redis.call('HINCRBY', COUNTS, 'expired', expired) end
return {cursor, skipped, expired, dead, out}
