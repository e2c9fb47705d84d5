-- start: mark a claimed call running under this delivery's token, unless it
-- was revoked or already has a final result. Claims start what they hand out
-- already (see `start_call`); this is for deliveries they could not start,
-- and is safe to repeat.
-- KEYS: 1 stream, 2 call state, 3 result, 4 revoked flag, 5 wake, 6 events,
--       7 queue's done counter
-- ARGV: 1 entry, 2 deliveries, 3 token, 4 host, 5 attempt, 6 queue,
--       7 result ttl ms, 8 marker ttl ms, 9 wake ttl ms, 10 id, 11 task, 12 submit time ms
-- Returns 'run', 'revoked', 'skip' (acknowledged) or 'stale' (not ours; untouched).
local stream, entry = KEYS[1], ARGV[1]
if not owns(stream, entry, ARGV[2]) then
  return 'stale'
end
local state, token = unpack(redis.call('HMGET', KEYS[2], 'state', 'token'))
local q = {
  stream = stream, events = KEYS[6], done = KEYS[7], queue = ARGV[6],
  ttl = ARGV[7], marker_ttl = ARGV[8], wake_ttl = ARGV[9],
}
local c = {
  call = KEYS[2], result = KEYS[3], revoked = KEYS[4], wake = KEYS[5],
  entry = entry, deliveries = ARGV[2], token = ARGV[3], host = ARGV[4],
  id = ARGV[10], task = ARGV[11], attempt = ARGV[5], submitted = ARGV[12],
}
return start_call(q, c, now_ms(), state == 'running' and token == ARGV[3])
