-- Counts one message of a user in a channel against a sliding window, unless the window
-- already holds the allowed number: a refused message is not counted.
--
-- KEYS[1]  the user's sorted set in this channel: one member per counted message, scored
--          by its time in ms
-- ARGV[1]  messages allowed per window
-- ARGV[2]  the window, in ms
-- ARGV[3]  a random id that makes this message's member unique
-- ARGV[4]  the message's idempotency key (scoped to its user), or "": the retries of one
--          message are one member, counted once
--
-- The time is Redis's own (TIME), one clock for every host, since a channel's keys all
-- live on one server. Scripts are replicated by their effects (the only way since Redis
-- 7, the default since 5), so reading the time before writing is allowed.
--
-- Returns {1, 0} when the message is counted (or was, under its key), or {0, ms until the
-- oldest counted message leaves the window} when it is refused.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local member = string.format('%d', now) .. ':' .. ARGV[3]
if ARGV[4] ~= '' then
  member = 'key:' .. ARGV[4]
  if redis.call('ZSCORE', KEYS[1], member) then
    return {1, 0}
  end
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
