-- The helpers every buttress script shares; redis_scripts.py puts this file before each script.
--
-- Numbers cross the wire as strings that round-trip exactly: Python sends repr(float), the scripts
-- answer with fmt (%.17g), because a Lua number returned as a reply is truncated to an integer.

local function num(s)
  -- a number argument; 'inf' (Python's repr of math.inf) is math.huge
  if s == 'inf' then return math.huge end
  return tonumber(s)
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function clock(arg)
  -- the caller's time, or ('') the server's: hosts with skewed clocks then agree. Redis 5 and
  -- later replicate scripts by their effects, which is what allows reading TIME before writing.
  if arg ~= '' then return tonumber(arg) end
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function ms(seconds)
  -- whole milliseconds, rounded up, within what PEXPIRE accepts (an integer: exact as an argument)
  local m = math.ceil(seconds * 1000)
  if m < 1 then m = 1 elseif m > 70368744177664 then m = 70368744177664 end
  return m
end

local function split(header)
  -- a rate-limit header "<tag>|<until>" -> the algorithm's tag, the end of a block (or nil)
  local bar = string.find(header, '|', 1, true)
  if not bar then return header, nil end
  return string.sub(header, 1, bar - 1), tonumber(string.sub(header, bar + 1))
end

local function fail(message)
  -- an error the store reports as StorageError (the tag tells it from Redis's own errors)
  return redis.error_reply('BUTTRESS ' .. message)
end

-- How far ahead of now a time in a stored rate-limit state may lie (seconds): the twin of
-- buttress.machines.ratelimit.FAR_AHEAD. A state further ahead would refuse its key for ever.
local FAR_AHEAD = 315360000

local function bad_time(x, now)
  -- whether a number read from a stored rate-limit state is no time a limiter writes: not a
  -- number, not finite (NaN fails both comparisons), or too far ahead
  return not (x and x > -math.huge and x <= now + FAR_AHEAD)
end

local function bad_state(what, text)
  return fail('the stored rate-limit state is malformed: ' .. what .. ' ' .. tostring(text))
end
