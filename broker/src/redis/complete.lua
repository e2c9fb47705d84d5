-- complete: publish the final envelopes of a batch of deliveries of one
-- queue, each only if its delivery still holds the call; the
-- first final result wins. One TIME for the batch.
-- KEYS: 1 stream, 2 events, 3 queue's done counter, 4 queue's latency
--       samples, then 3 per delivery: call state, result, wake
-- ARGV: 1 result ttl ms, 2 marker ttl ms, 3 wake ttl ms, 4 queue, then 10
--       per delivery (in the order of its keys): entry, deliveries, token,
--       envelope JSON, id, final state, host, task, error kind ('' = none),
--       submit time ms
-- Returns per delivery 1 if published (or already published by this same
-- delivery), else 0.
local stream = KEYS[1]
local queue = ARGV[4]
local clock, now = nil, nil
local published, latencies = 0, {}
local out = {}
-- Entries done with, acknowledged together at the end (one XACK and one
-- XDEL per batch; a Lua error before then leaves them pending, and their
-- redelivery finds the result and acknowledges them).
local acked = {}
for k = 0, (#KEYS - 4) / 3 - 1 do
  local call_key, result_key, wake_key = KEYS[5 + 3 * k], KEYS[6 + 3 * k], KEYS[7 + 3 * k]
  local a = 5 + 10 * k
  local entry, deliveries, token, envelope = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local ok = 0
  local state, current = unpack(redis.call('HMGET', call_key, 'state', 'token'))
  if state == 'done' and current == token then
    -- Published by this delivery before (a repeated batch): make sure its
    -- entry is acknowledged too.
    ok = 1
    acked[#acked + 1] = entry
  elseif current == token and owns(stream, entry, deliveries) then
    if not clock then
      clock = clock_ms()
      now = math.floor(clock)
    end
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
      mark_published(call_key, wake_key, envelope, ARGV[2], ARGV[3], token)
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
      redis.call('HDEL', call_key, 'token')
    end
  end
  out[#out + 1] = ok
end
if #acked > 0 then
  redis.call('XACK', stream, 'hosts', unpack(acked))
  redis.call('XDEL', stream, unpack(acked))
end
if published > 0 then
  -- One latency entry and one count for the whole batch.
  count_final(KEYS[3], KEYS[4], now, latencies, published)
end
return out
