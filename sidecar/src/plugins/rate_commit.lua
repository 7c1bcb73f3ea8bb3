-- Marks the slot of a published message with an idempotency key as counted, so that a
-- refused retry does not give it back: "p:key:<key>" becomes "key:<key>", keeping its
-- time. If the slot is gone (a concurrent retry gave it back), the message is counted now:
-- it was published.
--
-- KEYS[1]  the user's sorted set in this channel (see rate_limit.lua)
-- ARGV[1]  the reserved member, "p:key:<key>"
-- ARGV[2]  the counted member, "key:<key>"
-- ARGV[3]  the window, in ms
local at = redis.call('ZSCORE', KEYS[1], ARGV[1])
if at then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], 'NX', at, ARGV[2])
  return 1
end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
