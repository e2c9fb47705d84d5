-- bury: move an entry this host holds to the dead-letter stream (garbage, or
-- past the delivery limit), publishing a failed envelope for its call if one
-- is given and no final result exists.
-- KEYS: 1 stream, 2 dead letters, 3 result, 4 call state, 5 wake, 6 events,
--       7 dead letters per queue, 8 queue's done counter
-- ARGV: 1 entry, 2 deliveries, 3 reason, 4 raw call field, 5 envelope JSON ('' = none),
--       6 result ttl ms, 7 marker ttl ms, 8 wake ttl ms, 9 dead-letter cap,
--       10 id, 11 queue, 12 error kind ('' = none), 13 task, 14 submit time ms
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
local published = false
if ARGV[5] ~= '' and key_type(KEYS[3]) ~= 'string' then
  publish(KEYS[3], KEYS[4], KEYS[5], ARGV[5], ARGV[6], ARGV[7], ARGV[8], '')
  published = true
end
local args = {'XADD', KEYS[2], '*', 'entry', entry, 'queue', ARGV[11], 'id', ARGV[10],
  'reason', ARGV[3], 'call', ARGV[4], 'deliveries', ARGV[2], 'ts', now}
if ARGV[12] ~= '' then
  args[#args + 1] = 'error'
  args[#args + 1] = ARGV[12]
end
redis.call(unpack(args))
redis.pcall('HINCRBY', KEYS[7], ARGV[11], 1)
-- Keep the cap exactly, so the per-queue counts stay true.
local cap = tonumber(ARGV[9])
local excess = redis.call('XLEN', KEYS[2]) - cap
if excess > 0 then
  for _, old in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', excess)) do
    redis.call('XDEL', KEYS[2], old[1])
    dead_count_down(KEYS[7], field_of(old[2] or {}, 'queue'))
  end
end
ack(stream, entry)
if published then
  event(KEYS[6], 'failed', ARGV[10], ARGV[11], ARGV[13], '', now, ARGV[12],
    latency_since(ARGV[14]))
  count_final(KEYS[8], nil, now, '')
end
event(KEYS[6], 'dead', ARGV[10], ARGV[11], ARGV[13], '', now, ARGV[12])
return 1
