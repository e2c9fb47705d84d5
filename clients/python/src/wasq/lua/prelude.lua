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
