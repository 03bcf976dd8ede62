-- One circuit-breaker step: buttress.backends.base.apply_breaker on the stored state of the
-- consecutive-failure BreakerMachine. Needs prelude.lua.
--
-- KEYS[1]: the breaker's state (a string holding the JSON of BreakerMachine.to_state).
-- ARGV: op, now ('' = the server's TIME), fail_max, recovery, half_open_max_calls,
--       success_threshold, probe_timeout, probe (0/1), ticket, failed (0/1), target, reason,
--       idle_ttl in milliseconds ('' = never expire).
-- Returns {allowed, probe, ticket, retry_after, state, failures, opened_at, old, new, reason}:
-- allowed/probe 0 or 1, ticket and failures integers, retry_after and opened_at %.17g strings,
-- and old/new/reason nil when the step made no transition.
local key = KEYS[1]
local op = ARGV[1]
local now = clock(ARGV[2])
local fail_max = tonumber(ARGV[3])
local recovery = num(ARGV[4])
local half_open_max_calls = tonumber(ARGV[5])
local success_threshold = tonumber(ARGV[6])
local probe_timeout = num(ARGV[7])
local is_probe = ARGV[8] == '1'
local ticket = tonumber(ARGV[9])
local failed = ARGV[10] == '1'
local target = ARGV[11]
local reason = ARGV[12]
local idle_ttl = ARGV[13]

-- The machine: m.probes maps ticket numbers to start times.
local m = {state = 'closed', generation = 0, failures = 0, opened_at = 0,
           probe_successes = 0, probes = {}, tickets = 0}

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function encode()
  local order = {}
  for t in pairs(m.probes) do order[#order + 1] = t end
  table.sort(order)
  local parts = {}
  for i, t in ipairs(order) do
    parts[i] = string.format('"%d":%s', t, fmt(m.probes[t]))
  end
  return string.format(
    '{"v":1,"state":"%s","generation":%d,"failures":%d,"opened_at":%s,' ..
    '"probe_successes":%d,"probes":{%s},"tickets":%d}',
    m.state, m.generation, m.failures, fmt(m.opened_at), m.probe_successes,
    table.concat(parts, ','), m.tickets)
end

local function count_field(data, field)
  local value = data[field]
  if type(value) ~= 'number' or value < 0 or value ~= math.floor(value) then
    return nil, field .. ' must be a non-negative integer'
  end
  return value
end

-- Load the stored state into m; returns an error message, or nil.
local function load(raw)
  local ok, data = pcall(cjson.decode, raw)
  if not ok then return 'is not JSON: ' .. tostring(data) end
  if type(data) ~= 'table' then return 'must be an object' end
  if data.v ~= 1 then return 'version ' .. tostring(data.v) .. ' is not 1' end
  local state = data.state
  if state ~= 'closed' and state ~= 'open' and state ~= 'half_open' then
    return 'has an unknown state ' .. tostring(state)
  end
  m.state = state
  local err
  for _, field in ipairs({'generation', 'failures', 'probe_successes', 'tickets'}) do
    m[field], err = count_field(data, field)
    if err then return err end
  end
  if type(data.opened_at) ~= 'number' or data.opened_at ~= data.opened_at then
    return 'opened_at must be a number'
  end
  m.opened_at = data.opened_at
  if type(data.probes) ~= 'table' then return 'probes must be an object' end
  for t, start in pairs(data.probes) do
    local n = tonumber(t)
    if not n or n ~= math.floor(n) then
      return 'probe ticket ' .. tostring(t) .. ' is not an integer'
    end
    if type(start) ~= 'number' or start ~= start then
      return 'probe ' .. tostring(t) .. ' must start at a number'
    end
    m.probes[n] = start
  end
  return nil
end

local raw = redis.call('GET', key)
if raw then
  local err = load(raw)
  if err then return fail('the stored breaker state ' .. err) end
end
local before = encode()

local function move(new, why)
  local old = m.state
  m.state = new
  m.generation = m.generation + 1
  m.failures = 0
  m.probe_successes = 0
  m.probes = {}
  if new == 'open' then m.opened_at = now end
  return {old, new, why}
end

local function oldest_probe()
  local oldest
  for _, start in pairs(m.probes) do
    if oldest == nil or start < oldest then oldest = start end
  end
  return oldest
end

local allowed, probe, number, retry_after = false, false, 0, 0
local transition

if op == 'acquire' then
  local decided = false
  if m.state == 'open' then
    local due = m.opened_at + recovery
    if now < due then
      retry_after = due - now
      decided = true
    else
      transition = move('half_open', 'recovery timeout elapsed')
    end
  end
  if not decided and m.state == 'half_open' then
    local oldest = oldest_probe()
    if oldest ~= nil and now - oldest >= probe_timeout then
      transition = move('open', 'half-open probe timed out')
      retry_after = recovery
    elseif count(m.probes) >= half_open_max_calls then
      if oldest ~= nil then retry_after = math.max(0, oldest + probe_timeout - now) end
    else
      m.tickets = m.tickets + 1
      m.probes[m.tickets] = now
      allowed, probe, number = true, true, m.tickets
    end
  elseif not decided then
    allowed, number = true, m.generation
  end
elseif op == 'record' then
  if is_probe then
    if m.probes[ticket] ~= nil then
      m.probes[ticket] = nil
      if failed then
        transition = move('open', 'half-open probe failed')
      else
        m.probe_successes = m.probe_successes + 1
        if m.probe_successes >= success_threshold then
          transition = move('closed', 'half-open probes succeeded')
        end
      end
    end
  elseif ticket == m.generation and m.state == 'closed' then
    if failed then
      m.failures = m.failures + 1
      if m.failures >= fail_max then
        transition = move('open', string.format('%d consecutive failures', m.failures))
      end
    else
      m.failures = 0
    end
  end
elseif op == 'release' then
  if is_probe then m.probes[ticket] = nil end
elseif op == 'force' then
  if target == 'closed' and m.state == 'closed' then
    move('closed', reason)  -- resets the counters without a visible transition
  elseif target ~= m.state then
    transition = move(target, reason)
  end
elseif op ~= 'read' then
  return fail('unknown breaker operation ' .. op)
end

if op ~= 'read' then
  local after = encode()
  local fresh = m.state == 'closed' and m.failures == 0
  if after ~= before then
    if fresh and idle_ttl ~= '' then
      redis.call('SET', key, after, 'PX', idle_ttl)
    else
      redis.call('SET', key, after)  -- a plain SET also drops any expiry
    end
  elseif raw and fresh and idle_ttl ~= '' then
    redis.call('PEXPIRE', key, idle_ttl)  -- still idle: keep it for another idle_ttl
  end
end

local reply = {allowed and 1 or 0, probe and 1 or 0, number, fmt(retry_after), m.state,
               m.failures, fmt(m.opened_at), false, false, false}
if transition then
  reply[8], reply[9], reply[10] = transition[1], transition[2], transition[3]
end
return reply
