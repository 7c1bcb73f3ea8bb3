-- Sets bans in one channel, drops the lapsed ones, and makes the channel's hash expire with
-- its last ban (or never, while one is for ever). Called with no bans to set, it only
-- cleans up and lists.
--
-- KEYS[1]  the channel's bans hash: field = user id, value = until, in ms since the Unix
--          epoch, or 0 for ever
-- ARGV[1]  now, in ms since the Unix epoch (the sidecar's clock, which also decides when a
--          ban has lapsed when it is read)
-- ARGV[2], ARGV[3], ...  pairs of user id and until to set
--
-- Returns the bans in force as a flat list: user, until, user, until, ...
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local all = redis.call('HGETALL', KEYS[1])
local left = {}
local last = 0
local forever = false
for i = 1, #all, 2 do
  local till = tonumber(all[i + 1])
  if till == 0 then
    forever = true
    left[#left + 1] = all[i]
    left[#left + 1] = all[i + 1]
  elseif till and till > now then
    if till > last then
      last = till
    end
    left[#left + 1] = all[i]
    left[#left + 1] = all[i + 1]
  else
    -- Lapsed, or not a number (written by something else): gone.
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if #left > 0 then
  if forever then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIREAT', KEYS[1], string.format('%d', last))
  end
end
return left
