-- dead_drop: delete a dead letter.
-- KEYS: 1 dead letters, 2 dead letters per queue
-- ARGV: 1 entry
-- Returns 1 if deleted, 0 if there was none.
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not e then
  return 0
end
redis.call('XDEL', KEYS[1], ARGV[1])
dead_count_down(KEYS[2], field_of(e[2] or {}, 'queue'))
return 1
