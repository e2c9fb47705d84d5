-- release: hand a claimed call back to its queue at once (a new entry, same
-- attempt). Needs only the delivery, not a start: a host may release calls it
-- claimed but never started.
-- KEYS: 1 stream, 2 call state, 3 result, 4 events
-- ARGV: 1 entry, 2 deliveries, 3 token, 4 call JSON, 5 id, 6 queue, 7 task
-- Returns 1 if re-queued, 0 if stale or already final (then just acknowledged).
local stream, entry, token = KEYS[1], ARGV[1], ARGV[3]
if not owns(stream, entry, ARGV[2]) then
  return 0
end
local now = now_ms()
if key_type(KEYS[3]) == 'string' then
  ack(stream, entry)
  return 0
end
redis.call('XADD', stream, '*', 'call', ARGV[4])
ack(stream, entry)
local current, host = unpack(redis.call('HMGET', KEYS[2], 'token', 'host'))
if current == token then
  redis.call('HDEL', KEYS[2], 'token', 'host', 'entry', 'deliveries')
  redis.call('HSET', KEYS[2], 'state', 'queued')
end
event(KEYS[4], 'released', ARGV[5], ARGV[6], ARGV[7], host or '', now)
return 1
