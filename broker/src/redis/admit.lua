-- admit: apply a queue's pause and rate limits to entries a blocking
-- XREADGROUP just handed this consumer (the claim script applies them to
-- what it reads itself). Entries not admitted are acknowledged and put back:
-- to the stream's tail if the queue is paused, to the delayed set (due when
-- the bucket has a token for them) if over a rate limit.
-- KEYS: 1 stream, 2 delayed, 3 paused flag, 4 queue rate bucket,
--       5.. rate buckets of rate-limited modules
-- ARGV: 1 number of module buckets n, 2..(n+1) their module hex, then entry ids
-- Returns the admitted entry ids.
local stream, delayed = KEYS[1], KEYS[2]
local n = tonumber(ARGV[1])
local modules = {}
for i = 1, n do
  modules[ARGV[i + 1]] = KEYS[i + 4]
end
local ids = {}
for i = n + 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
local now = now_ms()
local paused = redis.call('EXISTS', KEYS[3]) == 1
local avail, _, step = bucket_peek(KEYS[4], now)
if not paused and avail == math.huge and n == 0 then
  return ids -- the usual case: nothing to check
end

local admitted = {}
local entries = {}
for _, id in ipairs(ids) do
  local e = redis.call('XRANGE', stream, id, id)[1]
  if e then
    entries[#entries + 1] = e
  end
end
local over = 0
local out = {}
for _, e in ipairs(entries) do
  local call = field_of(e[2] or {}, 'call')
  if call == nil then
    -- Garbage: admitted, so the host dead-letters it.
    admitted[#admitted + 1] = e[1]
  elseif paused then
    redis.call('XADD', stream, '*', 'call', call)
    ack(stream, e[1])
  elseif avail ~= math.huge and avail - #out < 1 then
    local short = 1 - (avail - #out)
    redis.call('ZADD', delayed, now + math.ceil(short * step) + math.floor(over * step), call)
    ack(stream, e[1])
    over = over + 1
  elseif n > 0 then
    admit_modules(stream, delayed, modules, {e}, now, out)
  else
    out[#out + 1] = {e[1]}
  end
end
bucket_take(KEYS[4], now, #out)
for _, e in ipairs(out) do
  admitted[#admitted + 1] = e[1]
end
return admitted
