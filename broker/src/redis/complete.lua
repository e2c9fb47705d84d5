-- complete: publish the final envelopes of a batch of deliveries of one
-- queue, each only if its delivery still holds the call; the
-- first final result wins. A delivery whose admission was held back (a
-- blocking read's, see RedisBroker::admit, or a claim's 'held') is admitted
-- here first, as admit.lua would, except that its call is never marked
-- running: its result is already here. Unless the call's state says it was
-- revoked since (then `start_call` publishes that), the checks `start_call`
-- begins with come free: the result's SET NX fails if one exists. One TIME
-- for the batch.
-- KEYS: 1 stream, 2 events, 3 queue's done counter, 4 queue's latency
--       samples, 5 paused flag, 6 queue rate bucket, then 4 per delivery:
--       call state, result, wake, revoked flag
-- ARGV: 1 result ttl ms, 2 marker ttl ms, 3 wake ttl ms, 4 queue, 5 and 6
--       the lowest and highest entry id of the batch ('' = do not read the
--       batch's pending records at once), then 12
--       per delivery (in the order of its keys): entry, deliveries, token,
--       envelope JSON, id, final state, host, task, error kind ('' = none),
--       submit time ms, attempt, '1' to admit it here (else '0')
-- Returns per delivery 1 if published (or already published by this same
-- delivery), 2 if it was to be admitted here but its queue has been paused
-- or rate-limited since it was read (nothing done: admit it apart first),
-- else 0.
local stream = KEYS[1]
local queue = ARGV[4]
local clock, now = nil, nil
local function tick()
  if not clock then
    clock = clock_ms()
    now = math.floor(clock)
  end
end
local published, latencies = 0, {}
local out = {}
-- Entries done with, acknowledged together at the end (one XACK and one
-- XDEL per batch; a Lua error before then leaves them pending, and their
-- redelivery finds the result and acknowledges them).
local acked = {}
-- Whether held-back admissions may go through here (read once).
local admissible = nil
local n = (#KEYS - 6) / 4
-- What the starts of held-back admissions share (see start_call).
local q = {
  stream = stream, events = KEYS[2], done = KEYS[3], queue = queue,
  ttl = ARGV[1], marker_ttl = ARGV[2], wake_ttl = ARGV[3], finished = true,
}
-- The pending records of the batch's entries: one XPENDING over their
-- range (ARGV 5 and 6, found by the caller: comparing ids here costs about
-- 1 µs a delivery) instead of one per entry (`owns`), read when first needed.
-- Entries past `covered` (the range held more than the read returned) are
-- looked up one by one.
local pel, covered = nil, nil
-- An entry id as its two numbers, or nil.
local function parse_id(e)
  local ms, seq = string.match(e, '^(%d+)%-(%d+)$')
  if ms then
    return tonumber(ms), tonumber(seq)
  end
end
local function prefetch()
  pel = false
  if ARGV[5] == '' then
    return
  end
  local cap = 2 * n + 128
  local r = redis.pcall('XPENDING', stream, GROUP, ARGV[5], ARGV[6], cap)
  if type(r) ~= 'table' or r.err then
    return
  end
  if #r >= cap then
    local m, s = parse_id(r[#r][1])
    if not m then
      return
    end
    covered = {m, s}
  end
  pel = {}
  for _, p in ipairs(r) do
    pel[p[1]] = p[4]
  end
end
local function owns_here(entry, deliveries)
  if pel == nil then
    prefetch()
  end
  if pel then
    -- Every entry of the batch lies in the range read.
    local m, s = nil, nil
    if covered then
      m, s = parse_id(entry)
    end
    if not covered or (m and (m < covered[1] or (m == covered[1] and s <= covered[2]))) then
      return pel[entry] == tonumber(deliveries)
    end
  end
  return owns(stream, entry, deliveries)
end
for k = 0, n - 1 do
  local call_key, result_key = KEYS[7 + 4 * k], KEYS[8 + 4 * k]
  local wake_key, revoked_key = KEYS[9 + 4 * k], KEYS[10 + 4 * k]
  local a = 7 + 12 * k
  local entry, deliveries, token, envelope = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local ok = 0
  -- Whether this delivery's admission goes through here, to be recorded
  -- (its `started` event) along with the result.
  local starting = false
  local state, current, waiting, revoking = unpack(redis.call('HMGET', call_key,
    'state', 'token', 'waiting', 'revoked'))
  local mine = current == token
  -- Whether the delivery still holds its entry (read once, if needed).
  local owned = nil
  if state == 'done' and mine then
    -- Published by this delivery before (a repeated batch): make sure its
    -- entry is acknowledged too.
    ok = 1
    acked[#acked + 1] = entry
  else
    if ARGV[a + 11] == '1' then
      -- Admitted here, if still its own: a delivery reclaimed meanwhile
      -- touches nothing.
      owned = owns_here(entry, deliveries)
      tick()
      if admissible == nil and owned then
        admissible = redis.call('EXISTS', KEYS[5]) == 0 and bucket_peek(KEYS[6], now) == math.huge
      end
      if not owned then
        mine = false
      elseif admissible then
        -- `already`: admitted before (a repeated batch whose admission
        -- went through), so nothing is recorded twice.
        local already = state == 'running' and mine
        if not revoking then
          -- What start_call checks first costs nothing more here: a result
          -- stored meanwhile makes the SET NX below fail, and a revocation
          -- since the claim (which saw no `revoked` flag) marked the state.
          mine, starting = true, not already
        else
          mine = start_call(q, {
            call = call_key, result = result_key, revoked = revoked_key, wake = wake_key,
            entry = entry, deliveries = deliveries, token = token, host = ARGV[a + 6],
            id = ARGV[a + 4], task = ARGV[a + 7], attempt = ARGV[a + 10], submitted = ARGV[a + 9],
          }, now, already) == 'run'
        end
      else
        ok, mine = 2, false
      end
    end
    if owned == nil and mine then
      owned = owns_here(entry, deliveries)
    end
    if mine and owned then
      tick()
      -- First final result wins: store ours only where there is none. The
      -- usual case costs one SET NX instead of TYPE + SET.
      local ttl = ARGV[1]
      local stored
      if tonumber(ttl) > 0 then
        stored = redis.call('SET', result_key, envelope, 'PX', ttl, 'NX')
      else
        stored = redis.call('SET', result_key, envelope, 'NX')
      end
      if not stored and key_type(result_key) ~= 'string' then
        -- Garbage at the result key: ours replaces it.
        store_result(result_key, envelope, ttl)
        stored = true
      end
      if stored then
        if starting then
          event(KEYS[2], 'started', ARGV[a + 4], queue, ARGV[a + 7], ARGV[a + 6], now)
        end
        mark_published(call_key, wake_key, envelope, ARGV[2], ARGV[3], token, waiting)
        acked[#acked + 1] = entry
        local latency = latency_since(ARGV[a + 9], clock)
        event(KEYS[2], ARGV[a + 5], ARGV[a + 4], queue, ARGV[a + 7], ARGV[a + 6], now,
          ARGV[a + 8], latency)
        published = published + 1
        latencies[#latencies + 1] = latency
        ok = 1
      else
        -- Someone else's final result is already there: it stays. Our entry is done.
        acked[#acked + 1] = entry
        if current == token then
          redis.call('HDEL', call_key, 'token')
        end
      end
    end
  end
  out[#out + 1] = ok
end
if #acked > 0 then
  redis.call('XACK', stream, GROUP, unpack(acked))
  redis.call('XDEL', stream, unpack(acked))
end
if published > 0 then
  -- One latency entry and one count for the whole batch.
  count_final(KEYS[3], KEYS[4], now, latencies, published)
end
return out
