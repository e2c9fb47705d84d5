-- bury: move an entry this host holds to the dead-letter stream (garbage, or
-- past the delivery limit), publishing a failed envelope for its call if one
-- is given and no final result exists.
-- KEYS: 1 stream, 2 dead letters, 3 result, 4 call state, 5 wake, 6 events
-- ARGV: 1 entry, 2 deliveries, 3 reason, 4 raw call field, 5 envelope JSON ('' = none),
--       6 result ttl ms, 7 marker ttl ms, 8 wake ttl ms, 9 dead-letter cap,
--       10 id, 11 queue, 12 event type
-- Returns 1 if buried, 0 if the entry is no longer ours.
local stream, entry = KEYS[1], ARGV[1]
if not owns(stream, entry, ARGV[2]) then
  return 0
end
local now = now_ms()
local dt = key_type(KEYS[2])
if dt ~= 'none' and dt ~= 'stream' then
  redis.call('DEL', KEYS[2])
end
if ARGV[5] ~= '' and key_type(KEYS[3]) ~= 'string' then
  publish(KEYS[3], KEYS[4], KEYS[5], ARGV[5], ARGV[6], ARGV[7], ARGV[8], '')
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[9]), '*',
  'entry', entry, 'queue', ARGV[11], 'id', ARGV[10], 'reason', ARGV[3],
  'call', ARGV[4], 'deliveries', ARGV[2], 'ts', now)
ack(stream, entry)
event(KEYS[6], ARGV[12], ARGV[10], ARGV[11], '', '', now)
return 1
