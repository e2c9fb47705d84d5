-- start: mark a claimed call running under this delivery's token, unless it
-- was revoked or already has a final result.
-- KEYS: 1 stream, 2 call state, 3 result, 4 revoked flag, 5 wake, 6 events,
--       7 queue's done counter
-- ARGV: 1 entry, 2 deliveries, 3 token, 4 host, 5 attempt, 6 queue,
--       7 result ttl ms, 8 marker ttl ms, 9 wake ttl ms, 10 id, 11 task, 12 submit time ms
-- Returns 'run', 'revoked', 'skip' (acknowledged) or 'stale' (not ours; untouched).
local stream, entry = KEYS[1], ARGV[1]
if not owns(stream, entry, ARGV[2]) then
  return 'stale'
end
local now = now_ms()
local revoked = redis.call('EXISTS', KEYS[4]) == 1
if key_type(KEYS[3]) == 'string' then
  ack(stream, entry)
  if revoked then
    return 'revoked'
  end
  return 'skip'
end
if revoked then
  local env = failure_envelope(ARGV[10], 'revoked', 'revoked', 'revoked before it started', ARGV[5])
  publish(KEYS[3], KEYS[2], KEYS[5], env, ARGV[7], ARGV[8], ARGV[9], ARGV[3])
  ack(stream, entry)
  event(KEYS[6], 'revoked', ARGV[10], ARGV[6], ARGV[11], ARGV[4], now, 'revoked',
    latency_since(ARGV[12]))
  count_final(KEYS[7], nil, now, '')
  return 'revoked'
end
redis.call('HSET', KEYS[2], 'state', 'running', 'queue', ARGV[6], 'token', ARGV[3],
  'host', ARGV[4], 'attempt', ARGV[5], 'entry', entry, 'deliveries', ARGV[2])
set_ttl(KEYS[2], ARGV[7])
event(KEYS[6], 'started', ARGV[10], ARGV[6], ARGV[11], ARGV[4], now)
return 'run'
