-- Reserves a slot for one message of a user in a channel against a sliding window, unless
-- the window already holds the allowed number: a refused message takes no slot. The slot
-- counts at once, so concurrent publishes from many hosts cannot pass the limit together;
-- the sidecar gives it back (ZREM) when the message is not published after all.
--
-- KEYS[1]  the user's sorted set in this channel: one member per counted message or
--          reserved slot, scored by its time in ms
-- ARGV[1]  messages allowed per window
-- ARGV[2]  the window, in ms
-- ARGV[3]  the member of the slot: a random id, or for a message with an idempotency key
--          (scoped to its user) "p:key:<key>", which becomes "key:<key>" once the message
--          is published (rate_commit.lua): the retries of one message share one slot
--
-- The time is Redis's own (TIME), one clock for every host, since a channel's keys all
-- live on one server. Scripts are replicated by their effects (the only way since Redis
-- 7, the default since 5), so reading the time before writing is allowed.
--
-- Returns {1, 0} when the slot is reserved, {2, 0} when a retry of the message holds it
-- (in flight), {3, 0} when the message was published and counted already, or {0, ms until
-- the oldest slot leaves the window} when it is refused.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local window = tonumber(ARGV[2])
local member = ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if string.sub(member, 1, 6) == 'p:key:' then
  if redis.call('ZSCORE', KEYS[1], string.sub(member, 3)) then
    return {3, 0}
  end
  if redis.call('ZSCORE', KEYS[1], member) then
    return {2, 0}
  end
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(oldest[2]) + window - now}
