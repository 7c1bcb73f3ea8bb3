-- Sets bans in one channel, drops the lapsed ones, and makes each of the channel's hashes
-- expire with its last ban (or never, while one is for ever). Called with no bans to set,
-- it only cleans up and lists.
--
-- KEYS[1]  the channel's bans hash: field = user:<sub> or name:<name>, value = until, in ms
--          since the Unix epoch, or 0 for ever
-- KEYS[2]  the hash of bans by bare id that earlier versions wrote (same values); read and
--          cleaned, never written
-- ARGV[1]  now, in ms since the Unix epoch (the sidecar's clock, which also decides when a
--          ban has lapsed when it is read)
-- ARGV[2], ARGV[3], ...  pairs of field and until to set in KEYS[1]
--
-- Returns the bans in force of each hash, as two flat lists: field, until, field, until, ...
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end

local function clean(key)
  local all = redis.call('HGETALL', key)
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
      redis.call('HDEL', key, all[i])
    end
  end
  if #left > 0 then
    if forever then
      redis.call('PERSIST', key)
    else
      redis.call('PEXPIREAT', key, string.format('%d', last))
    end
  end
  return left
end

return {clean(KEYS[1]), clean(KEYS[2])}
