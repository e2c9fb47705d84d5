-- revoke: set the durable flag; a call that is not running yet (queued,
-- delayed or retrying) is revoked at once: its envelope is published now and
-- hosts that claim it later skip it in `start`. So is a running call whose
-- host stopped heartbeating (its entry idled past the lease): whoever
-- reclaims it skips it. A call running on a live host is ended by that host.
-- KEYS: 1 call state, 2 result, 3 revoked flag, 4 wake, 5 events,
--       6 queue's done counter, 7 queue's stream
-- ARGV: 1 id, 2 result ttl ms, 3 marker ttl ms, 4 wake ttl ms,
--       5 the call's queue as the caller read it, 6 lease ms
-- Returns 1 if revoked, 0 if unknown or final, -1 if the call's queue is not
-- ARGV[5] (read it again).
if key_type(KEYS[2]) == 'string' then
  return 0
end
local state, attempt, queue, task, submitted, host, entry = unpack(redis.call('HMGET', KEYS[1],
  'state', 'attempt', 'queue', 'task', 'submitted', 'host', 'entry'))
if not state or state == 'done' then
  return 0
end
if (queue or '') ~= ARGV[5] then
  return -1
end
local now = now_ms()
redis.call('SET', KEYS[3], '1')
set_ttl(KEYS[3], ARGV[2])
local final, message = false, 'revoked before it started'
if state == 'queued' or state == 'retrying' then
  final = true
elseif state == 'running' and entry then
  local p = redis.pcall('XPENDING', KEYS[7], GROUP, 'IDLE', tonumber(ARGV[6]), entry, entry, 1)
  if type(p) == 'table' and not p.err and p[1] ~= nil then
    final, message = true, 'revoked while its host was gone'
  end
end
if final then
  local env = failure_envelope(ARGV[1], 'revoked', 'revoked', message, attempt)
  publish(KEYS[2], KEYS[1], KEYS[4], env, ARGV[2], ARGV[3], ARGV[4], '')
  event(KEYS[5], 'revoked', ARGV[1], queue, task, host, now, 'revoked', latency_since(submitted))
  count_final(KEYS[6], nil, now, '')
else
  -- Running: its host ends it. The state says so too, for the result's
  -- script (complete.lua reads it with the state, not the flag).
  redis.call('HSET', KEYS[1], 'revoked', '1')
end
return 1
