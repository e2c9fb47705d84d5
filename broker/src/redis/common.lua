-- Helpers shared by every wasq script; RedisBroker prepends this file to each
-- script at build time. Conventions:
--   * the consumer group of every work stream is `hosts`;
--   * a delivery is identified by its stream entry and its delivery count
--     (XREADGROUP starts it at 1, every reclaim adds 1, heartbeats use
--     XCLAIM JUSTID, which does not), so `owns` tells whether the caller still
--     holds the delivery it was given;
--   * validate and read first, write last: a Lua error does not roll back the
--     writes made before it.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function set_ttl(key, ttl)
  ttl = tonumber(ttl)
  if ttl and ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
end

local function key_type(key)
  return redis.call('TYPE', key)['ok']
end

-- The pending-entries record of `entry`: {id, consumer, idle, deliveries}, or nil.
local function pending_of(stream, entry)
  local p = redis.pcall('XPENDING', stream, 'hosts', entry, entry, 1)
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
  redis.call('XACK', stream, 'hosts', entry)
  redis.call('XDEL', stream, entry)
end

-- Stores a final envelope, leaves a short-lived marker of which delivery
-- published it (so a retried `complete` is idempotent) and wakes every
-- waiter. The caller has checked that no final result exists yet.
local function publish(result_key, call_key, wake_key, envelope, ttl, marker_ttl, wake_ttl, token)
  local wt = key_type(wake_key)
  if wt ~= 'none' and wt ~= 'stream' then
    redis.call('DEL', wake_key)
  end
  ttl = tonumber(ttl)
  if ttl > 0 then
    redis.call('SET', result_key, envelope, 'PX', ttl)
  else
    redis.call('SET', result_key, envelope)
  end
  redis.call('DEL', call_key)
  redis.call('HSET', call_key, 'state', 'done', 'token', token or '')
  redis.call('PEXPIRE', call_key, marker_ttl)
  redis.call('XADD', wake_key, 'MAXLEN', 1, '*', 'done', '1')
  redis.call('PEXPIRE', wake_key, wake_ttl)
end

-- A failed (or revoked) envelope that no run produced, in the shape of
-- wasq_broker::Envelope.
local function failure_envelope(id, state, kind, message, attempt)
  return '{"id":' .. cjson.encode(id) .. ',"state":"' .. state .. '","result":null,' ..
    '"error":{"kind":"' .. kind .. '","message":' .. cjson.encode(message) .. '},' ..
    '"stdout":"","stderr":"","logs":[],"fuel_used":0,"duration_ms":0.0,' ..
    '"attempt":' .. string.format('%d', tonumber(attempt) or 0) .. ',"host":""}'
end

-- Best effort: an event for monitoring, capped at about 10 000 entries.
local function event(events_key, kind, id, queue, task, host, ts)
  redis.pcall('XADD', events_key, 'MAXLEN', '~', 10000, '*',
    'type', kind, 'id', id or '', 'queue', queue or '', 'task', task or '',
    'host', host or '', 'ts', ts)
end

