-- stats (one queue): its counts in one atomic step, and its throughput and
-- latency percentiles over the last minute.
-- KEYS: 1 stream, 2 delayed, 3 paused flag, 4 rate bucket, 5 done counter,
--       6 latency samples, 7 dead letters per queue, 8 dead letters
-- ARGV: 1 queue, 2 window ms, 3 most latency samples
-- Returns {entries in the stream, claimed (pending), delayed, paused 1/0,
--          rate per second ('' = none), burst, final results in the window,
--          dead letters, p50, p90, p99 ('' = no samples)}
local now = now_ms()
local window = tonumber(ARGV[2])
local len = 0
if key_type(KEYS[1]) == 'stream' then
  len = redis.call('XLEN', KEYS[1])
end
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], GROUP)
if type(p) == 'table' and not p.err then
  pending = tonumber(p[1]) or 0
end
local delayed = 0
if key_type(KEYS[2]) == 'zset' then
  delayed = redis.call('ZCARD', KEYS[2])
end
local paused = redis.call('EXISTS', KEYS[3])
local rate, burst = '', ''
if key_type(KEYS[4]) == 'hash' then
  local r = redis.call('HMGET', KEYS[4], 'rate', 'burst')
  rate, burst = r[1] or '', r[2] or ''
end
local done = 0
if key_type(KEYS[5]) == 'hash' then
  local from = math.floor((now - window) / 1000)
  local h = redis.call('HGETALL', KEYS[5])
  for i = 1, #h - 1, 2 do
    local sec = tonumber(h[i])
    if sec and sec > from then
      done = done + (tonumber(h[i + 1]) or 0)
    end
  end
end
local dead = 0
if key_type(KEYS[8]) ~= 'stream' or redis.call('XLEN', KEYS[8]) == 0 then
  -- No dead letters at all: whatever the counts say is stale.
  redis.pcall('DEL', KEYS[7])
elseif key_type(KEYS[7]) == 'hash' then
  dead = tonumber(redis.call('HGET', KEYS[7], ARGV[1])) or 0
end
local samples = {}
if key_type(KEYS[6]) == 'stream' then
  local lat = redis.call('XREVRANGE', KEYS[6], '+', tostring(now - window), 'COUNT',
    tonumber(ARGV[3]))
  -- An entry holds the samples of one batch of results (`ms` repeated).
  local most = tonumber(ARGV[3])
  for _, e in ipairs(lat) do
    local fields = e[2] or {}
    for i = 1, #fields - 1, 2 do
      local ms = fields[i] == 'ms' and tonumber(fields[i + 1])
      if ms and #samples < most then
        samples[#samples + 1] = ms
      end
    end
  end
end
table.sort(samples)
local function pct(q)
  if #samples == 0 then
    return ''
  end
  local rank = math.max(1, math.min(#samples, math.ceil(q / 100 * #samples)))
  return string.format('%.3f', samples[rank])
end
return {len, pending, delayed, paused, tostring(rate), tostring(burst), done,
  math.max(0, dead), pct(50), pct(90), pct(99)}
