-- submit: queue one call (or park it in the delayed set) and record it as queued.
-- KEYS: 1 stream, 2 delayed, 3 call state, 4 events, 5 known queues
-- ARGV: 1 call JSON, 2 id, 3 queue, 4 attempt, 5 state ttl ms (0 = none),
--       6 countdown ms (negative = none), 7 task, 8 submit time ms
local now = now_ms()
local countdown = tonumber(ARGV[6])
if countdown >= 0 then
  redis.call('ZADD', KEYS[2], now + countdown, ARGV[1])
else
  redis.call('XADD', KEYS[1], '*', 'call', ARGV[1])
end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'state', 'queued', 'queue', ARGV[3], 'attempt', ARGV[4],
  'task', ARGV[7], 'submitted', ARGV[8])
set_ttl(KEYS[3], ARGV[5])
redis.pcall('SADD', KEYS[5], ARGV[3])
event(KEYS[4], 'queued', ARGV[2], ARGV[3], ARGV[7], '', now)
return 1
