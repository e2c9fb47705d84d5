-- claim (one queue): promote due delayed calls, then, unless the queue is
-- paused and within its rate limit, reclaim entries idle for longer than
-- the lease (their host stopped heartbeating) and read new entries, holding
-- back those whose module is over its rate limit; all without blocking. The
-- caller blocks separately if this returns nothing. What it hands out it
-- also starts (`start_call`), so a host needs no `start` round trip, or,
-- for fresh entries of a queue without limits, leaves to be admitted with
-- their results ('held'); entries past the delivery limit, or whose call it
-- cannot read, it leaves to the host (to dead-letter, or to start itself).
-- Touches the per-call keys (P:call:ID, P:result:ID, P:revoked:ID,
-- P:wake:ID) of the calls it starts, which it can only name once it has
-- read them.
-- KEYS: 1 stream, 2 delayed, 3 paused flag, 4 queue rate bucket, 5 events,
--       6 queue's done counter, 7.. rate buckets of rate-limited modules
-- ARGV: 1 consumer, 2 max entries, 3 lease ms, 4 reclaim? (1/0),
--       5 max promotions, 6 consumer gc idle ms (0 = skip the gc),
--       7 key prefix, 8 token prefix (a delivery's token is it, ':' and the
--       entry id), 9 delivery limit, 10 queue, 11 state ttl ms,
--       12 marker ttl ms, 13 wake ttl ms, 14 most bytes of a call entry,
--       15.. module hex of each of KEYS[7..]
-- Returns {ms until claiming may find something without a new entry
--          arriving: a delayed call due or a rate bucket refilled (-1: none),
--          {{entry id, {field, value, ...}, deliveries, outcome}, ...},
--          1 if a blocking read of new entries may hand them out now, else 0
--          (paused, or the queue's bucket is empty)}
-- where outcome is what `start_call` returned, 'held' if its start is left
-- to the host's admission, or '' if not started. A `call` over ARGV[14]
-- bytes is not sent: the entry comes back unstarted with the call's first
-- 256 bytes and an `oversized` field holding its size, for the host to bury.
local stream, delayed = KEYS[1], KEYS[2]
local consumer, want, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()

-- The group starts at 0 so calls queued before any host existed are delivered.
redis.pcall('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')

local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, member in ipairs(due) do
  redis.call('XADD', stream, '*', 'call', member)
  redis.call('ZREM', delayed, member)
end

local next_due = -1
local function sooner(ms)
  if next_due < 0 or ms < next_due then
    next_due = ms
  end
end

local out = {}
local blockable = 0
-- Whether fresh entries may be handed out unstarted (see below): no rate
-- limit applies to the queue or any module.
local hold = false
if redis.call('EXISTS', KEYS[3]) == 0 then
  local avail, refill = bucket_peek(KEYS[4], now)
  local allowed = want
  if avail ~= math.huge then
    allowed = math.min(want, math.floor(avail))
  end
  if avail < 1 then
    sooner(refill)
  else
    blockable = 1
  end

  if ARGV[4] == '1' and allowed > 0 then
    local idle = redis.call('XPENDING', stream, GROUP, 'IDLE', lease, '-', '+', allowed)
    for _, p in ipairs(idle) do
      local claimed = redis.call('XCLAIM', stream, GROUP, consumer, lease, p[1])
      local e = claimed[1]
      if e and e[1] then
        out[#out + 1] = {e[1], e[2] or {}, tonumber(p[4]) + 1}
      end
    end
  end

  local modules, limited = {}, false
  for i = 7, #KEYS do
    modules[ARGV[i + 8]] = KEYS[i]
    limited = true
  end
  hold = avail == math.huge and not limited
  -- Held-back entries make room for more: read again, a few times at most.
  local rounds = 0
  while #out < allowed and rounds < 4 do
    rounds = rounds + 1
    local ask = allowed - #out
    local r = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', ask,
      'STREAMS', stream, '>')
    local got = (r and r[1] and r[1][2]) or {}
    local held = 0
    if limited then
      held = admit_modules(stream, delayed, modules, got, now, out)
    else
      for _, e in ipairs(got) do
        e[2], e[3] = e[2] or {}, 1
        out[#out + 1] = e
      end
    end
    if #got < ask or held == 0 then
      break
    end
  end
  bucket_take(KEYS[4], now, #out)
end

-- Start what we hand out; or, for a fresh entry without limits to heed,
-- hold its start back ('held'): the host admits it with its result (see
-- complete.lua), or alone if the call runs longer, which saves writing its
-- state twice. A call revoked or finished already is started here (which
-- skips it), so it never runs.
local prefix, max_deliveries, max_entry = ARGV[7], tonumber(ARGV[9]), tonumber(ARGV[14])
local q = {
  stream = stream, events = KEYS[5], done = KEYS[6], queue = ARGV[10],
  ttl = ARGV[11], marker_ttl = ARGV[12], wake_ttl = ARGV[13],
  prefix = prefix, token_prefix = ARGV[8], host = consumer,
}
for _, o in ipairs(out) do
  local outcome = ''
  local call = field_of(o[2], 'call')
  if type(call) == 'string' and #call > max_entry then
    o[2] = {'call', string.sub(call, 1, 256), 'oversized', tostring(#call)}
  elseif o[3] <= max_deliveries then
    -- Held, a call needs only its id here (the host reads the rest, and
    -- buries a call it cannot read).
    local fresh = hold and o[3] == 1 and type(call) == 'string'
      and string.match(call, '^{"id":"([%w_%-]+)"')
    if fresh and #fresh <= 128 and redis.call('EXISTS', prefix .. RESULT_PART .. fresh,
        prefix .. REVOKED_PART .. fresh) == 0 then
      outcome = 'held'
    else
      local id, task, attempt, submitted = call_head(call)
      if id then
        outcome = start_entry(q, o[1], o[3], id, task, attempt, submitted, now)
      end
    end
  end
  o[4] = outcome
end

-- Forget consumers (old host processes) that hold nothing and were idle long.
local gc_idle = tonumber(ARGV[6])
if gc_idle > 0 then
  local consumers = redis.call('XINFO', 'CONSUMERS', stream, GROUP)
  for _, c in ipairs(consumers) do
    local info = {}
    for i = 1, #c, 2 do
      info[c[i]] = c[i + 1]
    end
    if tonumber(info['pending']) == 0 and tonumber(info['idle']) > gc_idle
        and info['name'] ~= consumer then
      redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, info['name'])
    end
  end
end

local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if first[2] then
  sooner(math.max(0, tonumber(first[2]) - now))
end
return {next_due, out, blockable}
