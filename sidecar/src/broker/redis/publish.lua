-- Publishes one message: assigns the channel's next id, appends the message to its history
-- and sends it to every host subscribed to the channel, as one atomic step. With an
-- idempotency key, publishes only if no publish with that key came within its window.
-- With guards (checks of the plugin chain: bans, the rate limit), publishes only if every
-- guard lets the message pass, and counts it in the rate limit's window in the same step.
--
-- KEYS[1]  the channel's meta hash (fields ep = epoch, id = last id)
-- KEYS[2]  the channel's history list, newest first
-- KEYS[3]  with ARGV[8]: the publish's idempotency key, a string "<epoch>:<id>" naming
--          the message published with it, expiring after the window
-- KEYS[..] then the keys of each guard, in order (see below)
-- ARGV[1]  the channel name encoded as a JSON string
-- ARGV[2]  the encoded message tail: "t":..,"user":..,"msg":..}
-- ARGV[3]  a fresh random epoch, used only if the channel has no meta (new or lost)
-- ARGV[4]  messages kept in the history (0: none)
-- ARGV[5]  seconds the channel's keys live after its last use
-- ARGV[6]  the pub/sub channel of live messages
-- ARGV[7]  PUBLISH, or SPUBLISH for Redis Cluster (sharded pub/sub)
-- ARGV[8]  the seconds the idempotency key KEYS[3] is remembered, or '' without a key
-- ARGV[9]  'publish', or 'check': apply the guards only, publish and count nothing
-- ARGV[10] the number of guards; then each guard's arguments, in order:
--   'ban', now (ms since the Unix epoch), n, n fields, n legacy fields
--          keys: the channel's bans hash (field = user:<sub> or name:<name>, value = until
--          in ms, 0 for ever) and the hash of bans by bare id earlier versions wrote;
--          a ban is in force when its until is 0 or after now (moderation/bans.lua)
--   'rate', messages allowed, the window in ms, the member to count the message under,
--          its idempotency key or ''
--          key: the user's sorted set in this channel, one member per counted message
--          scored by its time in ms on Redis's clock (plugins/rate_limit.lua): the
--          window slides; a message with a key already counted ("key:<key>") or held by an
--          older host's reservation ("p:key:<key>") passes without counting again
--
-- History entries and live messages are "<epoch>:<id>:<message JSON>".
-- Returns {epoch, id} when published; {epoch, id, 1} when KEYS[3] named an earlier
-- publish: then nothing was published and epoch and id are that publish's; {0, 0, 2,
-- until} when a ban (until 0: for ever) stops it; {0, 0, 3, ms} when the rate limit does,
-- a place freeing after ms; {0, 0, 4} when ARGV[9] is 'check' and the guards let it pass.
local k = 3
local once
if ARGV[8] ~= '' then
  once = KEYS[k]
  k = k + 1
end
local a = 11
-- The rate limit's place for the message, taken once it is published.
local place
for _ = 1, tonumber(ARGV[10]) do
  local kind = ARGV[a]
  if kind == 'ban' then
    local now = tonumber(ARGV[a + 1])
    local n = tonumber(ARGV[a + 2])
    local found
    for h = 0, 1 do
      local names = {}
      for i = 1, n do
        names[i] = ARGV[a + 2 + h * n + i]
      end
      if n > 0 then
        local values = redis.call('HMGET', KEYS[k + h], unpack(names))
        for i = 1, n do
          -- Something unreadable (or no ban) is no ban.
          local till = tonumber(values[i])
          if till and (till == 0 or till > now) then
            if not found or till == 0 or (found ~= 0 and till > found) then
              found = till
            end
          end
        end
      end
    end
    a = a + 3 + 2 * n
    k = k + 2
    if found then
      return {0, 0, 2, found}
    end
  elseif kind == 'rate' then
    local counts = KEYS[k]
    local limit = tonumber(ARGV[a + 1])
    local window = tonumber(ARGV[a + 2])
    local member = ARGV[a + 3]
    local key = ARGV[a + 4]
    a = a + 5
    k = k + 1
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    redis.call('ZREMRANGEBYSCORE', counts, '-inf', now - window)
    local counted = key ~= '' and (redis.call('ZSCORE', counts, 'key:' .. key) or
      redis.call('ZSCORE', counts, 'p:key:' .. key))
    if not counted then
      if redis.call('ZCARD', counts) >= limit then
        local oldest = redis.call('ZRANGE', counts, 0, 0, 'WITHSCORES')
        return {0, 0, 3, tonumber(oldest[2]) + window - now}
      end
      place = {counts, now, member, window}
    end
  else
    return redis.error_reply('unknown guard ' .. tostring(kind))
  end
end
if ARGV[9] == 'check' then
  return {0, 0, 4}
end
if once then
  local first = redis.call('GET', once)
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
if once then
  redis.call('SET', once, ep .. ':' .. id, 'EX', ARGV[8])
end
if place then
  redis.call('ZADD', place[1], place[2], place[3])
  redis.call('PEXPIRE', place[1], place[4])
end
redis.call(ARGV[7], ARGV[6], entry)
return {ep, id}
