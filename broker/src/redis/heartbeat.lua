-- heartbeat (one queue): reset the idle time of the entries this host still
-- holds, so nobody reclaims them. Entries reclaimed by someone else are left
-- alone (XCLAIM would otherwise steal them back).
-- KEYS: 1 stream
-- ARGV: 1 consumer, then pairs of entry id and deliveries
-- Returns the entries that were reclaimed: pending under another consumer
-- or with another delivery count. An entry no longer pending at all was
-- acknowledged (its call finished, usually by this host between taking its
-- list of running calls and this script): nothing to keep fresh, and not lost.
local stream, consumer = KEYS[1], ARGV[1]
local lost = {}
for i = 2, #ARGV, 2 do
  local p = pending_of(stream, ARGV[i])
  if p ~= nil then
    if p[2] == consumer and tonumber(p[4]) == tonumber(ARGV[i + 1]) then
      redis.call('XCLAIM', stream, GROUP, consumer, 0, ARGV[i], 'JUSTID')
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
return lost
