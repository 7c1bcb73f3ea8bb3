-- Publishes one message: assigns the channel's next id, appends the message to its history
-- and sends it to every host subscribed to the channel, as one atomic step. With an
-- idempotency key, publishes only if no publish with that key came within its window.
--
-- KEYS[1]  the channel's meta hash (fields ep = epoch, id = last id)
-- KEYS[2]  the channel's history list, newest first
-- KEYS[3]  optional: the publish's idempotency key, a string "<epoch>:<id>" naming the
--          message published with it, expiring after the window
-- ARGV[1]  the channel name encoded as a JSON string
-- ARGV[2]  the encoded message tail: "t":..,"user":..,"msg":..}
-- ARGV[3]  a fresh random epoch, used only if the channel has no meta (new or lost)
-- ARGV[4]  messages kept in the history (0: none)
-- ARGV[5]  seconds the channel's keys live after its last use
-- ARGV[6]  the pub/sub channel of live messages
-- ARGV[7]  PUBLISH, or SPUBLISH for Redis Cluster (sharded pub/sub)
-- ARGV[8]  with KEYS[3]: the seconds the idempotency key is remembered
--
-- History entries and live messages are "<epoch>:<id>:<message JSON>".
-- Returns {epoch, id}, or {epoch, id, 1} when KEYS[3] named an earlier publish: then
-- nothing was published and epoch and id are that publish's.
if KEYS[3] then
  local first = redis.call('GET', KEYS[3])
  if first then
    local colon = string.find(first, ':', 1, true)
    return {string.sub(first, 1, colon - 1), string.sub(first, colon + 1), 1}
  end
end
local ep = redis.call('HGET', KEYS[1], 'ep')
if not ep then
  ep = ARGV[3]
  redis.call('HSET', KEYS[1], 'ep', ep, 'id', 0)
  -- A history without its meta belongs to a lost epoch.
  redis.call('DEL', KEYS[2])
end
local id = string.format('%d', redis.call('HINCRBY', KEYS[1], 'id', 1))
local entry = ep .. ':' .. id .. ':{"ch":' .. ARGV[1] .. ',"id":' .. id .. ',"ep":' .. ep ..
  ',' .. ARGV[2]
local keep = tonumber(ARGV[4])
if keep > 0 then
  redis.call('LPUSH', KEYS[2], entry)
  redis.call('LTRIM', KEYS[2], 0, keep - 1)
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
if KEYS[3] then
  redis.call('SET', KEYS[3], ep .. ':' .. id, 'EX', ARGV[8])
end
redis.call(ARGV[7], ARGV[6], entry)
return {ep, id}
