-- revoke: set the durable flag; a call that is not running yet (queued,
-- delayed or retrying) is revoked at once: its envelope is published now and
-- hosts that claim it later skip it in `start`.
-- KEYS: 1 call state, 2 result, 3 revoked flag, 4 wake, 5 events
-- ARGV: 1 id, 2 result ttl ms, 3 marker ttl ms, 4 wake ttl ms
-- Returns 1 if revoked, 0 if unknown or final.
if key_type(KEYS[2]) == 'string' then
  return 0
end
local state, attempt, queue = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempt', 'queue'))
if not state or state == 'done' then
  return 0
end
local now = now_ms()
redis.call('SET', KEYS[3], '1')
set_ttl(KEYS[3], ARGV[2])
if state == 'queued' or state == 'retrying' then
  local env = failure_envelope(ARGV[1], 'revoked', 'revoked', 'revoked before it started', attempt)
  publish(KEYS[2], KEYS[1], KEYS[4], env, ARGV[2], ARGV[3], ARGV[4], '')
end
event(KEYS[5], 'revoke', ARGV[1], queue, '', '', now)
return 1
