-- host_gone: take a host out of the index and record `host_offline`, once.
-- KEYS: 1 hosts index, 2 host record, 3 events
-- ARGV: 1 host id, 2 'clean' (deregistering: delete its record) or
--       'expired' (only if its lease lapsed: its record is gone)
-- Returns 1 if this call took it out.
if ARGV[2] == 'expired' and redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local err = ''
if ARGV[2] == 'expired' then
  err = 'lease_expired'
end
event(KEYS[3], 'host_offline', '', '', '', ARGV[1], now_ms(), err)
return 1
