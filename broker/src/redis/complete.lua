-- complete: publish a final envelope if this delivery still holds the call;
-- the first final result wins.
-- KEYS: 1 stream, 2 call state, 3 result, 4 wake, 5 events, 6 queue's done
--       counter, 7 queue's latency samples
-- ARGV: 1 entry, 2 deliveries, 3 token, 4 envelope JSON, 5 result ttl ms,
--       6 marker ttl ms, 7 wake ttl ms, 8 id, 9 final state, 10 queue, 11 host, 12 task,
--       13 error kind ('' = none), 14 submit time ms
-- Returns 1 if published (or already published by this same delivery), else 0.
local stream, entry, token = KEYS[1], ARGV[1], ARGV[3]
local state, current = unpack(redis.call('HMGET', KEYS[2], 'state', 'token'))
if state == 'done' and current == token then
  return 1
end
if current ~= token then
  return 0
end
if not owns(stream, entry, ARGV[2]) then
  return 0
end
local now = now_ms()
if key_type(KEYS[3]) == 'string' then
  -- Someone else's final result is already there: it stays. Our entry is done.
  ack(stream, entry)
  redis.call('HDEL', KEYS[2], 'token')
  return 0
end
publish(KEYS[3], KEYS[2], KEYS[4], ARGV[4], ARGV[5], ARGV[6], ARGV[7], token)
ack(stream, entry)
local latency = latency_since(ARGV[14])
event(KEYS[5], ARGV[9], ARGV[8], ARGV[10], ARGV[12], ARGV[11], now, ARGV[13], latency)
count_final(KEYS[6], KEYS[7], now, latency)
return 1
