-- retry: record a failed attempt and park attempt + 1 in the delayed set.
-- KEYS: 1 stream, 2 delayed, 3 call state, 4 events
-- ARGV: 1 entry, 2 deliveries, 3 token, 4 next call JSON, 5 delay ms,
--       6 last envelope JSON, 7 state ttl ms, 8 next attempt, 9 id, 10 queue, 11 host, 12 task,
--       13 error kind of the failed attempt
-- Returns 1 if scheduled, 0 if the delivery is stale.
local stream, entry, token = KEYS[1], ARGV[1], ARGV[3]
if redis.call('HGET', KEYS[3], 'token') ~= token or not owns(stream, entry, ARGV[2]) then
  return 0
end
local now = now_ms()
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
redis.call('HDEL', KEYS[3], 'token', 'host', 'entry', 'deliveries')
redis.call('HSET', KEYS[3], 'state', 'retrying', 'last', ARGV[6], 'attempt', ARGV[8])
set_ttl(KEYS[3], ARGV[7])
ack(stream, entry)
event(KEYS[4], 'retried', ARGV[9], ARGV[10], ARGV[12], ARGV[11], now, ARGV[13])
return 1
