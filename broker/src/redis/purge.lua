-- purge (one call of a queue): drop a waiting entry of the stream, or a
-- member of the delayed set, and revoke its call ("purged") so waiters wake
-- and no copy of it starts. An entry a host has claimed is left alone: only
-- entries after the group's last delivered id have never been delivered.
-- KEYS: 1 stream, 2 delayed, 3 call state, 4 result, 5 wake, 6 revoked flag,
--       7 events, 8 queue's done counter
-- ARGV: 1 'stream' or 'delayed', 2 entry id or delayed member, 3 call id ('' = garbage),
--       4 queue, 5 attempt, 6 task, 7 submit time ms, 8 result ttl ms,
--       9 marker ttl ms, 10 wake ttl ms
-- Returns 1 if dropped, 0 if it was gone or claimed.
if ARGV[1] == 'stream' then
  local entry = ARGV[2]
  if not redis.call('XRANGE', KEYS[1], entry, entry)[1] then
    return 0
  end
  local last = '0-0'
  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
  if type(groups) == 'table' and not groups.err then
    for _, g in ipairs(groups) do
      if field_of(g, 'name') == GROUP then
        last = field_of(g, 'last-delivered-id') or last
      end
    end
  end
  if not id_after(entry, last) then
    return 0
  end
  redis.call('XDEL', KEYS[1], entry)
elseif redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then
  return 0
end
revoke_now({call = KEYS[3], result = KEYS[4], wake = KEYS[5], revoked = KEYS[6],
  events = KEYS[7], done = KEYS[8], id = ARGV[3], queue = ARGV[4], attempt = ARGV[5],
  task = ARGV[6], submitted = ARGV[7], ttl = ARGV[8], marker_ttl = ARGV[9],
  wake_ttl = ARGV[10], message = 'purged'}, now_ms())
return 1
