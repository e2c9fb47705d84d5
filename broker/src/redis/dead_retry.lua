-- dead_retry: take a dead letter out and queue its call again as a fresh
-- submission under the same id, discarding its failed envelope.
-- KEYS: 1 dead letters, 2 dead letters per queue, 3 stream, 4 call state,
--       5 result, 6 wake, 7 events, 8 known queues
-- ARGV: 1 dead-letter entry, 2 call JSON, 3 id, 4 queue, 5 task, 6 state ttl ms,
--       7 submit time ms
-- Returns 1 if queued, 0 if there is no such dead letter, -1 if its call is
-- live again or has succeeded (then the dead letter stays).
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not e then
  return 0
end
local state = redis.call('HGET', KEYS[4], 'state')
if state and state ~= 'done' then
  return -1
end
if key_type(KEYS[5]) == 'string' then
  local ok, env = pcall(cjson.decode, redis.call('GET', KEYS[5]))
  if ok and type(env) == 'table' and env.state == 'succeeded' then
    return -1
  end
end
local now = now_ms()
redis.call('XDEL', KEYS[1], ARGV[1])
dead_count_down(KEYS[2], field_of(e[2] or {}, 'queue'))
redis.call('DEL', KEYS[5], KEYS[6])
redis.call('XADD', KEYS[3], '*', 'call', ARGV[2])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'state', 'queued', 'queue', ARGV[4], 'attempt', 1,
  'task', ARGV[5], 'submitted', ARGV[7])
set_ttl(KEYS[4], ARGV[6])
redis.pcall('SADD', KEYS[8], ARGV[4])
event(KEYS[7], 'queued', ARGV[3], ARGV[4], ARGV[5], '', now)
return 1
