-- drop_consumer: forget a host's consumer in one queue's group if it holds
-- nothing (never drop pending entries: that would lose their calls).
-- KEYS: 1 stream
-- ARGV: 1 consumer
local p = redis.pcall('XPENDING', KEYS[1], GROUP, '-', '+', 1, ARGV[1])
if type(p) ~= 'table' or p.err or p[1] ~= nil then
  return 0
end
redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1], GROUP, ARGV[1])
return 1
