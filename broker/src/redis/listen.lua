-- listen: the state of a call and, while it is pending, a mark that a
-- waiter is about to block on its wake-up stream (`waiting`), so that the
-- script publishing its result adds the wake-up (see mark_published). A
-- result published before this ran added none: the state then says final.
-- KEYS: 1 call state
-- Returns the state (nil if there is no call state).
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' or state == 'retrying' then
  redis.call('HSET', KEYS[1], 'waiting', '1')
end
return state
