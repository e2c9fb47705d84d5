-- submit: queue a batch of calls of one queue (or park them in the delayed
-- set) and record each as queued. One TIME and one SADD per batch.
-- KEYS: 1 stream, 2 delayed, 3 events, 4 known queues, 5.. call state of each call
-- ARGV: 1 queue, 2 state ttl ms (0 = none), 3 countdown ms (negative = none),
--       4 '1' if the submitter is about to wait for the calls (they are
--       marked `waiting`, as listen.lua would), then 5 per call, in the
--       order of KEYS[5..]: call JSON, id, attempt, task, submit time ms
-- Returns the number of calls queued.
local queue, ttl, countdown, waiting = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local now = now_ms()
local n = #KEYS - 4
for k = 0, n - 1 do
  local a = 5 + 5 * k
  local json, id, attempt, task, submitted = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local call_key = KEYS[5 + k]
  if countdown >= 0 then
    redis.call('ZADD', KEYS[2], now + countdown, json)
  else
    redis.call('XADD', KEYS[1], '*', 'call', json)
  end
  redis.call('DEL', call_key)
  if waiting then
    redis.call('HSET', call_key, 'state', 'queued', 'queue', queue, 'attempt', attempt,
      'task', task, 'submitted', submitted, 'waiting', '1')
  else
    redis.call('HSET', call_key, 'state', 'queued', 'queue', queue, 'attempt', attempt,
      'task', task, 'submitted', submitted)
  end
  set_ttl(call_key, ttl)
  event(KEYS[3], 'queued', id, queue, task, '', now)
end
redis.pcall('SADD', KEYS[4], queue)
return n
