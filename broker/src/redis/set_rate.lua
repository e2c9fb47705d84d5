-- set_rate: set or remove a rate limit: its entry in the registry and its
-- token bucket. A new limit starts with a full bucket; changing a limit keeps
-- the tokens the bucket has (up to the new burst).
-- KEYS: 1 registry, 2 bucket, 3 known queues
-- ARGV: 1 registry field (`queue:NAME` / `module:HEX`), 2 per second ('' = remove),
--       3 burst, 4 queue name ('' for a module)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
  return 1
end
local now = now_ms()
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local avail = bucket_peek(KEYS[2], now)
if avail == math.huge then
  avail = burst
end
if key_type(KEYS[2]) ~= 'hash' then
  redis.call('DEL', KEYS[2])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
redis.call('HSET', KEYS[2], 'rate', rate, 'burst', burst, 'tokens', math.min(avail, burst), 'ts', now)
if ARGV[4] ~= '' then
  redis.call('SADD', KEYS[3], ARGV[4])
end
return 1
