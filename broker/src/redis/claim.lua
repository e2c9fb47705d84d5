-- claim (one queue): promote due delayed calls, reclaim entries idle for
-- longer than the lease (their host stopped heartbeating), then read new
-- entries, all without blocking. The caller blocks separately if this
-- returns nothing.
-- KEYS: 1 stream, 2 delayed
-- ARGV: 1 consumer, 2 max entries, 3 lease ms, 4 reclaim? (1/0),
--       5 max promotions, 6 consumer gc idle ms (0 = skip the gc)
-- Returns {ms until the next delayed call is due (-1: none),
--          {{entry id, {field, value, ...}, deliveries}, ...}}
local stream, delayed = KEYS[1], KEYS[2]
local consumer, want, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()

-- The group starts at 0 so calls queued before any host existed are delivered.
redis.pcall('XGROUP', 'CREATE', stream, 'hosts', '0', 'MKSTREAM')

local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, member in ipairs(due) do
  redis.call('XADD', stream, '*', 'call', member)
  redis.call('ZREM', delayed, member)
end

local out = {}
if ARGV[4] == '1' and want > 0 then
  local idle = redis.call('XPENDING', stream, 'hosts', 'IDLE', lease, '-', '+', want)
  for _, p in ipairs(idle) do
    local claimed = redis.call('XCLAIM', stream, 'hosts', consumer, lease, p[1])
    local e = claimed[1]
    if e and e[1] then
      out[#out + 1] = {e[1], e[2] or {}, tonumber(p[4]) + 1}
    end
  end
end

if #out < want then
  local r = redis.call('XREADGROUP', 'GROUP', 'hosts', consumer, 'COUNT', want - #out,
    'STREAMS', stream, '>')
  if r and r[1] then
    for _, e in ipairs(r[1][2]) do
      out[#out + 1] = {e[1], e[2] or {}, 1}
    end
  end
end

-- Forget consumers (old host processes) that hold nothing and were idle long.
local gc_idle = tonumber(ARGV[6])
if gc_idle > 0 then
  local consumers = redis.call('XINFO', 'CONSUMERS', stream, 'hosts')
  for _, c in ipairs(consumers) do
    local info = {}
    for i = 1, #c, 2 do
      info[c[i]] = c[i + 1]
    end
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) > gc_idle
        and info['name'] ~= consumer then
      redis.call('XGROUP', 'DELCONSUMER', stream, 'hosts', info['name'])
    end
  end
end

local next_due = -1
local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(0, tonumber(first[2]) - now)
end
return {next_due, out}
