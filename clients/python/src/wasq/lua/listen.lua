-- Generated from the Rust constants (broker/src/redis/keys.rs, ops.rs).
local GROUP = 'hosts'
local CALL_PART, RESULT_PART = ':call:', ':result:'
local WAKE_PART, REVOKED_PART = ':wake:', ':revoked:'
local LEVEL_SUFFIX = ':level'
local TOKEN_SEP = ':'
local EVENTS_CAP = '10000'
local LATENCY_CAP = '1000'
local COUNTERS_TTL_MS = '180000'
local COUNTERS_KEEP_S = 120
-- Helpers shared by every wasq script; RedisBroker prepends this file to each
-- script at build time, after the prelude that keys.rs generates (GROUP, the
-- key-name parts CALL_PART..., EVENTS_CAP and the other shared constants).
-- Conventions:
--   * the consumer group of every work stream is GROUP;
--   * a delivery is identified by its stream entry and its delivery count
--     (XREADGROUP starts it at 1, every reclaim adds 1, heartbeats use
--     XCLAIM JUSTID, which does not), so `owns` tells whether the caller still
--     holds the delivery it was given;
--   * validate and read first, write last: a Lua error does not roll back the
--     writes made before it.

-- The Redis clock in ms, with µs as the fraction.
local function clock_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function now_ms()
  return math.floor(clock_ms())
end

-- Numbers handed to redis.call are formatted with snprintf("%.17g") by
-- Redis 7.0, which costs more than the command itself: the scripts pass
-- numbers as the text they came in (ARGV) or format integers once (`int_text`).
local function set_ttl(key, ttl)
  local n = tonumber(ttl)
  if n and n > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- An integral number as text, remembering the last one (every event of a
-- script carries the same timestamp).
local last_int, last_int_text = nil, nil
local function int_text(n)
  if n ~= last_int then
    last_int, last_int_text = n, string.format('%d', n)
  end
  return last_int_text
end

local function key_type(key)
  return redis.call('TYPE', key)['ok']
end

-- The pending-entries record of `entry`: {id, consumer, idle, deliveries}, or nil.
local function pending_of(stream, entry)
  local p = redis.pcall('XPENDING', stream, GROUP, entry, entry, 1)
  if type(p) ~= 'table' or p.err or p[1] == nil then
    return nil
  end
  return p[1]
end

-- Whether `entry` is still pending with this delivery count (nobody reclaimed it since).
local function owns(stream, entry, deliveries)
  local p = pending_of(stream, entry)
  return p ~= nil and tonumber(p[4]) == tonumber(deliveries)
end

local function ack(stream, entry)
  redis.call('XACK', stream, GROUP, entry)
  redis.call('XDEL', stream, entry)
end

-- Leaves a short-lived marker of which delivery published the (just
-- stored) final envelope, so a retried `complete` is idempotent, and wakes
-- the waiters, if any: a waiter marks the call (`waiting`, see listen.lua)
-- before it blocks, and only then does the wake-up entry exist; it carries
-- the envelope (field `env`), so a waiter needs no second read. `waiting`
-- is that field if the caller has read it already (nil: read here).
local function mark_published(call_key, wake_key, envelope, marker_ttl, wake_ttl, token, waiting)
  if waiting == nil then
    waiting = redis.call('HGET', call_key, 'waiting')
  end
  redis.call('DEL', call_key)
  redis.call('HSET', call_key, 'state', 'done', 'token', token or '')
  redis.call('PEXPIRE', call_key, marker_ttl)
  if not waiting then
    return
  end
  local added = redis.pcall('XADD', wake_key, 'MAXLEN', '1', '*', 'env', envelope)
  if type(added) == 'table' and added.err then
    -- Not a stream (garbage): replace it.
    redis.call('DEL', wake_key)
    redis.call('XADD', wake_key, 'MAXLEN', '1', '*', 'env', envelope)
  end
  redis.call('PEXPIRE', wake_key, wake_ttl)
end

-- Stores a final envelope (`ttl` 0 keeps it forever), writing over anything
-- else at its key.
local function store_result(result_key, envelope, ttl)
  if tonumber(ttl) > 0 then
    redis.call('SET', result_key, envelope, 'PX', ttl)
  else
    redis.call('SET', result_key, envelope)
  end
end

-- Stores a final envelope, marks who published it and wakes every waiter
-- (see mark_published). The caller has checked that no final result exists yet.
local function publish(result_key, call_key, wake_key, envelope, ttl, marker_ttl, wake_ttl, token)
  store_result(result_key, envelope, ttl)
  mark_published(call_key, wake_key, envelope, marker_ttl, wake_ttl, token)
end

-- A failed (or revoked) envelope that no run produced, in the shape of
-- wasq_broker::Envelope.
local function failure_envelope(id, state, kind, message, attempt)
  return '{"id":' .. cjson.encode(id) .. ',"state":"' .. state .. '","result":null,' ..
    '"error":{"kind":"' .. kind .. '","message":' .. cjson.encode(message) .. '},' ..
    '"stdout":"","stderr":"","logs":[],"fuel_used":0,"duration_ms":0.0,' ..
    '"attempt":' .. string.format('%d', tonumber(attempt) or 0) .. ',"host":""}'
end

-- The deployment's event level (EventLevel), read from `P:events:level`
-- (the events key and LEVEL_SUFFIX)
-- on a script's first call event: 0 all (no key, or garbage), 1 outcomes
-- (no `queued`, `started`), 2 off (no call events).
local events_level = nil
local function records(events_key, kind)
  if events_level == nil then
    local l = redis.pcall('GET', events_key .. LEVEL_SUFFIX)
    if l == 'off' then
      events_level = 2
    elseif l == 'outcomes' then
      events_level = 1
    else
      events_level = 0
    end
  end
  if events_level == 0 or string.sub(kind, 1, 5) == 'host_' then
    return true
  end
  return events_level == 1 and kind ~= 'queued' and kind ~= 'started'
end

-- Best effort: an event for monitoring, capped at about EVENTS_CAP entries,
-- if the event level records it. `err` is an error kind and `latency` the
-- ms from submission to a final result, empty where they do not apply.
-- Every entry has the same fields, which a stream stores once per node,
-- and the command is built without a table (each saves about 0.3 µs an
-- event).
local function event(events_key, kind, id, queue, task, host, ts, err, latency)
  if not records(events_key, kind) then
    return
  end
  if type(ts) == 'number' then
    ts = int_text(ts)
  end
  redis.pcall('XADD', events_key, 'MAXLEN', '~', EVENTS_CAP, '*',
    'type', kind, 'id', id or '', 'queue', queue or '', 'task', task or '',
    'host', host or '', 'ts', ts, 'error', err or '', 'latency', latency or '')
end

-- The ms from `submitted` (ms since the epoch, the submitter's clock) to
-- now (`clock`, from clock_ms, or read here), as text with µs; '' when the
-- submit time is unknown.
local function latency_since(submitted, clock)
  submitted = tonumber(submitted)
  if not submitted or submitted <= 0 then
    return ''
  end
  local now = clock or clock_ms()
  return string.format('%.3f', math.max(0, now - submitted))
end

-- Best effort: the per-queue counters behind queue_stats. `done_key` is a
-- hash of final results per second (field: the second; older than
-- COUNTERS_KEEP_S pruned); `lat_key` (optional) a stream of the latencies of
-- results hosts produced, each entry holding one or more `ms` fields.
-- `latencies` is one latency (text), or a list of them; `n` (default 1)
-- how many results to count.
local function count_final(done_key, lat_key, now, latencies, n)
  if lat_key and latencies then
    local args = {'XADD', lat_key, 'MAXLEN', '~', LATENCY_CAP, '*'}
    if type(latencies) ~= 'table' then
      latencies = {latencies}
    end
    for _, l in ipairs(latencies) do
      if l ~= '' then
        args[#args + 1] = 'ms'
        args[#args + 1] = l
      end
    end
    if #args > 6 then
      redis.pcall(unpack(args))
    end
  end
  local sec = math.floor(now / 1000)
  -- The first result of a second prunes and renews the TTLs (so both keys
  -- go once the queue has been idle for COUNTERS_TTL_MS).
  local count = redis.pcall('HINCRBY', done_key, sec, n or 1)
  if type(count) == 'number' and count == (n or 1) then
    local fields = redis.pcall('HKEYS', done_key)
    if type(fields) == 'table' and not fields.err then
      for _, f in ipairs(fields) do
        local s = tonumber(f)
        if not s or s < sec - COUNTERS_KEEP_S then
          redis.pcall('HDEL', done_key, f)
        end
      end
    end
    redis.pcall('PEXPIRE', done_key, COUNTERS_TTL_MS)
    if lat_key then
      redis.pcall('PEXPIRE', lat_key, COUNTERS_TTL_MS)
    end
  end
end

-- A token bucket for a rate limit, on the Redis clock: a hash with `rate`
-- (tokens per second), `burst`, `tokens` and `ts` (ms of the last update).
-- Returns the tokens available now (math.huge without a limit, or if the
-- key holds garbage), the ms until the next whole token, and the ms one
-- token takes to refill.
local function bucket_peek(key, now)
  local h = redis.pcall('HMGET', key, 'rate', 'burst', 'tokens', 'ts')
  if type(h) ~= 'table' or h.err then
    return math.huge, 0, 0
  end
  local rate, burst = tonumber(h[1]), tonumber(h[2])
  if not rate or rate <= 0 or not burst or burst < 1 then
    return math.huge, 0, 0
  end
  local tokens, ts = tonumber(h[3]) or burst, tonumber(h[4]) or now
  local avail = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  local wait = 0
  if avail < 1 then
    wait = math.ceil((1 - avail) * 1000 / rate)
  end
  return avail, wait, 1000 / rate
end

-- Takes `n` tokens from a bucket (no-op without a limit).
local function bucket_take(key, now, n)
  if n <= 0 then
    return
  end
  local avail = bucket_peek(key, now)
  if avail ~= math.huge then
    redis.pcall('HSET', key, 'tokens', avail - n, 'ts', now)
  end
end

-- The value of `name` in a stream entry's field list.
local function field_of(fields, name)
  for i = 1, #fields - 1, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- The module hex of a call JSON, read from its head without decoding the
-- args (wasq writes `id`, then `module`, first).
local function module_of(call)
  if type(call) ~= 'string' then
    return nil
  end
  return string.match(string.sub(call, 1, 512), '"module":"(%x+)"')
end

-- Admits freshly read entries of a queue through the module rate limits:
-- an entry whose module's bucket is empty goes to the delayed set, due when
-- the bucket will have a token for it, and its stream entry is dropped.
-- `modules` maps module hex to bucket key. Appends admitted entries to
-- `out` as {id, fields, 1}; returns how many were held back.
local function admit_modules(stream, delayed, modules, entries, now, out)
  local held = 0
  local queued_behind = {}
  for _, e in ipairs(entries) do
    local fields = e[2] or {}
    local call = field_of(fields, 'call')
    local hex = module_of(call)
    local key = hex and modules[hex]
    local ok = true
    if key then
      local avail, wait, step = bucket_peek(key, now)
      if avail < 1 then
        local behind = queued_behind[hex] or 0
        queued_behind[hex] = behind + 1
        redis.call('ZADD', delayed, now + wait + math.floor(behind * step), call)
        ack(stream, e[1])
        held = held + 1
        ok = false
      else
        bucket_take(key, now, 1)
      end
    end
    if ok then
      out[#out + 1] = {e[1], fields, 1}
    end
  end
  return held
end

-- Lowers the per-queue count of dead letters (never below zero).
local function dead_count_down(count_key, queue)
  local n = tonumber(redis.pcall('HINCRBY', count_key, queue or '', -1))
  if n and n <= 0 then
    redis.pcall('HDEL', count_key, queue or '')
  end
end

-- Revokes a call that no host holds, at once: the durable flag, then (unless
-- it is final already, or running from another entry) its `revoked`
-- envelope, event and count. `c` holds the keys (call, result, wake,
-- revoked, events, done) and the call's id, queue, attempt, task,
-- submitted, the TTLs (ttl, marker_ttl, wake_ttl) and the message.
local function revoke_now(c, now)
  if c.id == '' then
    return
  end
  if redis.call('HGET', c.call, 'state') == 'running' then
    return
  end
  redis.call('SET', c.revoked, '1')
  set_ttl(c.revoked, c.ttl)
  if key_type(c.result) == 'string' then
    return
  end
  local env = failure_envelope(c.id, 'revoked', 'revoked', c.message, c.attempt)
  publish(c.result, c.call, c.wake, env, c.ttl, c.marker_ttl, c.wake_ttl, '')
  event(c.events, 'revoked', c.id, c.queue, c.task, '', now, 'revoked', latency_since(c.submitted))
  count_final(c.done, nil, now, '')
end

-- Whether stream id `a` comes after `b`.
local function id_after(a, b)
  local am, as = string.match(a, '^(%d+)-?(%d*)$')
  local bm, bs = string.match(b, '^(%d+)-?(%d*)$')
  if not am or not bm then
    return false
  end
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then
    return am > bm
  end
  return (tonumber(as) or 0) > (tonumber(bs) or 0)
end

-- The id, task, attempt and submit time of a call JSON as wasq writes it
-- (`{"id":…,"module":…,"task":…,"args":…,…,"attempt":N,"submitted_ms":N,…}`),
-- read without decoding the args; nil if it does not look like that (the
-- host then parses it and starts it itself).
local function call_head(call)
  if type(call) ~= 'string' then
    return nil
  end
  -- Anchored: the match stops at the first byte that does not fit.
  local id, task = string.match(call, '^{"id":"([%w_%-]+)","module":"%x+","task":"([%w_]+)"')
  if not id or #id > 128 then
    return nil
  end
  -- Both follow the args, so the last one is the call's own: plain finds
  -- over the last KiB (a pattern tried at every byte costs about 2 µs a call).
  local at, from = nil, math.max(1, #call - 1023)
  while true do
    local i = string.find(call, '"attempt":', from, true)
    if not i then
      break
    end
    at, from = i, i + 10
  end
  if not at then
    return nil
  end
  local attempt, submitted = string.match(call, '^"attempt":(%d+),"submitted_ms":(%d+)', at)
  if not attempt then
    return nil
  end
  return id, task, attempt, submitted
end

-- The per-call keys of call `id` (state, result, revoked flag, wake-up),
-- named from the key prefix as keys.rs names them, set on table `c`.
local function name_call_keys(c, prefix, id)
  c.call, c.result = prefix .. CALL_PART .. id, prefix .. RESULT_PART .. id
  c.revoked, c.wake = prefix .. REVOKED_PART .. id, prefix .. WAKE_PART .. id
  return c
end

-- Marks a claimed call running under this delivery's token, unless it was
-- revoked (its `revoked` envelope is published) or already has a final
-- result; the entry is acknowledged in both cases. With `already`, the call
-- is running under this token: nothing is written again.
-- `q` is what every start of a script shares, built once per script: the
-- queue's keys (stream, events, done), its name (queue), the TTLs (ttl,
-- marker_ttl, wake_ttl) and, with `finished`, that the calls are being
-- admitted along with their results (complete.lua): not marked running,
-- and a `revoked` envelope is published under no token (so a repeat of
-- that script does not count it as its own result). Claim scripts add the
-- key prefix (prefix), the claim's token prefix (token_prefix) and the host
-- (host), for `start_entry`.
-- `c` is the delivery: the call's keys (call, result, revoked, wake), the
-- delivery (entry, deliveries, token, host) and the call (id, task,
-- attempt, submitted).
-- Returns 'run', 'revoked' or 'skip'.
local function start_call(q, c, now, already)
  -- The usual case costs one command: neither key exists.
  if redis.call('EXISTS', c.result, c.revoked) > 0 then
    local revoked = redis.call('EXISTS', c.revoked) == 1
    if key_type(c.result) == 'string' then
      ack(q.stream, c.entry)
      if revoked then
        return 'revoked'
      end
      return 'skip'
    end
    if revoked then
      local env = failure_envelope(c.id, 'revoked', 'revoked', 'revoked before it started', c.attempt)
      local token = c.token
      if q.finished then
        token = ''
      end
      publish(c.result, c.call, c.wake, env, q.ttl, q.marker_ttl, q.wake_ttl, token)
      ack(q.stream, c.entry)
      event(q.events, 'revoked', c.id, q.queue, c.task, c.host, now, 'revoked',
        latency_since(c.submitted))
      count_final(q.done, nil, now, '')
      return 'revoked'
    end
  end
  if already then
    return 'run'
  end
  if q.finished then
    event(q.events, 'started', c.id, q.queue, c.task, c.host, now)
    return 'run'
  end
  redis.call('HSET', c.call, 'state', 'running', 'queue', q.queue, 'token', c.token,
    'host', c.host, 'attempt', c.attempt, 'entry', c.entry, 'deliveries', c.deliveries)
  set_ttl(c.call, q.ttl)
  event(q.events, 'started', c.id, q.queue, c.task, c.host, now)
  return 'run'
end

-- Starts a delivery a claim script hands out (claim.lua, admit.lua): its
-- keys named from q.prefix, its token from q.token_prefix and the entry id
-- (as entry.rs `delivery_token` makes it), run by q.host.
local function start_entry(q, entry, deliveries, id, task, attempt, submitted, now)
  local c = name_call_keys({
    entry = entry, deliveries = deliveries, token = q.token_prefix .. TOKEN_SEP .. entry,
    host = q.host, id = id, task = task, attempt = attempt, submitted = submitted,
  }, q.prefix, id)
  return start_call(q, c, now, false)
end

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
