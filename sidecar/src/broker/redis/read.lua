-- Reads a channel's epoch, last id and history, creating the channel (with the given fresh
-- epoch) when it has none, so every reader agrees on one epoch from then on.
--
-- KEYS[1]  the channel's meta hash (fields ep, id)
-- KEYS[2]  the channel's history list, newest first
-- ARGV[1]  a fresh random epoch, used only if the channel has no meta
-- ARGV[2]  seconds the channel's keys live after their last use
-- ARGV[3]  how many entries to return at most
-- ARGV[4]  return only entries with an id below this (0: from the newest)
-- ARGV[5]  the epoch of the newest message the reader already handed on (0: none)
-- ARGV[6]  that message's id
--
-- A last id below the reader's in the same epoch means Redis lost acknowledged messages
-- (a replica promoted before it had them): their ids would be given to new messages, so
-- the channel starts a new epoch instead, as if its history were gone.
--
-- Returns {epoch, last id, entries newest first...}; entries are "<epoch>:<id>:<JSON>".
local ep = redis.call('HGET', KEYS[1], 'ep')
local head = tonumber(redis.call('HGET', KEYS[1], 'id')) or 0
if ep and ep == ARGV[5] and head < tonumber(ARGV[6]) then
  ep = nil
end
if not ep then
  ep = ARGV[1]
  redis.call('HSET', KEYS[1], 'ep', ep, 'id', 0)
  redis.call('DEL', KEYS[2])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {ep, 0}
end
local count = tonumber(ARGV[3])
local before = tonumber(ARGV[4])
local start = 0
if before > 0 then
  -- The entry with id x sits at index head - x.
  start = head - before + 1
  if start < 0 then start = 0 end
end
local out = {ep, head}
if count > 0 then
  local entries = redis.call('LRANGE', KEYS[2], start, start + count - 1)
  for i = 1, #entries do
    out[#out + 1] = entries[i]
  end
end
return out
