-- fail.lua: record executions as finished with a terminal failure (HubSpot refused them, the
-- portal uninstalled the app, ...). They leave the engine; their ids stay deduplicated. One
-- taken again since (a newer attempt) belongs to its new holder: the stale holder's verdict
-- changes nothing.
--
-- KEYS[1]  leases  zset  the shard's leases ("ref|callbackId" -> deadline ms)
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  events_maxlen  bound of the shard's event stream (then events are dropped and counted)
-- ARGV[4]  done_ms        how long a finished callback id stays deduplicated
-- ARGV[5..] quadruples: ref, callbackId, attempt (the holder's fencing token), reason
-- Returns the number of items recorded as failed

local leases_key = KEYS[1]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local maxlen = ARGV[3]
local done_ms = tonumber(ARGV[4])
local first_quad = 5

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)

local count = 0
for i = first_quad, #ARGV, 4 do
  local ref, cb, att, reason = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local pol, qid = split_ref(ref)
  if finish(leases_key, prefix, policy_keys(prefix, pol), ref, cb, att, now_ms + done_ms, "failed") then
    emit(prefix, maxlen, { "t", "fail", "pol", pol, "q", qid, "ts", fmt(now), "cb", cb,
                           "err", reason })
    count = count + 1
  end
end
return count
