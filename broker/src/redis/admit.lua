-- admit: apply a queue's pause and rate limits to entries a blocking
-- XREADGROUP just handed this consumer (the claim script applies them to
-- what it reads itself), and start the admitted ones (`start_call`), as the
-- claim script does. Entries not admitted are acknowledged and put back:
-- to the stream's tail if the queue is paused, to the delayed set (due when
-- the bucket has a token for them) if over a rate limit.
-- Touches the per-call keys of the calls it starts (see claim.lua).
-- KEYS: 1 stream, 2 delayed, 3 paused flag, 4 queue rate bucket, 5 events,
--       6 queue's done counter, 7.. rate buckets of rate-limited modules
-- ARGV: 1 consumer, 2 key prefix, 3 token prefix, 4 queue, 5 state ttl ms,
--       6 marker ttl ms, 7 wake ttl ms, 8 number of module buckets n,
--       9..(8+n) their module hex, then 5 per entry: entry id, call id ('' =
--       do not start it: the host dead-letters it), task, attempt, submit time ms
-- Returns per entry (in order) 'no' if not admitted, else what `start_call`
-- returned, or '' if admitted but not started.
local stream, delayed = KEYS[1], KEYS[2]
local consumer, prefix, token_prefix, queue = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[8])
local modules = {}
for i = 1, n do
  modules[ARGV[i + 8]] = KEYS[i + 6]
end
local entries = {}
for i = n + 9, #ARGV - 4, 5 do
  entries[#entries + 1] = {id = ARGV[i], call = ARGV[i + 1], task = ARGV[i + 2],
    attempt = ARGV[i + 3], submitted = ARGV[i + 4]}
end
local now = now_ms()
local admitted = {}
local paused = redis.call('EXISTS', KEYS[3]) == 1
local avail, _, step = bucket_peek(KEYS[4], now)
if not paused and avail == math.huge and n == 0 then
  -- The usual case: nothing to check.
  for _, e in ipairs(entries) do
    admitted[e.id] = true
  end
else
  local over = 0
  local out = {}
  for _, e in ipairs(entries) do
    local raw = redis.call('XRANGE', stream, e.id, e.id)[1]
    local call = raw and field_of(raw[2] or {}, 'call')
    if raw == nil then
      -- Gone (acknowledged meanwhile): not ours to start.
    elseif call == nil then
      -- Garbage: admitted, so the host dead-letters it.
      admitted[e.id] = true
    elseif paused then
      redis.call('XADD', stream, '*', 'call', call)
      ack(stream, e.id)
    elseif avail ~= math.huge and avail - #out < 1 then
      local short = 1 - (avail - #out)
      redis.call('ZADD', delayed, now + math.ceil(short * step) + math.floor(over * step), call)
      ack(stream, e.id)
      over = over + 1
    elseif n > 0 then
      admit_modules(stream, delayed, modules, {raw}, now, out)
    else
      out[#out + 1] = {e.id}
    end
  end
  bucket_take(KEYS[4], now, #out)
  for _, o in ipairs(out) do
    admitted[o[1]] = true
  end
end

local q = {
  stream = stream, events = KEYS[5], done = KEYS[6], queue = queue,
  ttl = ARGV[5], marker_ttl = ARGV[6], wake_ttl = ARGV[7],
  prefix = prefix, token_prefix = token_prefix, host = consumer,
}
local outcomes = {}
for i, e in ipairs(entries) do
  local outcome = 'no'
  if admitted[e.id] then
    outcome = ''
    if e.call ~= '' then
      outcome = start_entry(q, e.id, 1, e.call, e.task, e.attempt, e.submitted, now)
    end
  end
  outcomes[i] = outcome
end
return outcomes
