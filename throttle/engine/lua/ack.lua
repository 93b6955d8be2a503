-- ack.lua: executions HubSpot accepted; forget them (keeping their ids for dedupe).
-- An item whose lease already ran out and went back to its queue is taken out of the queue
-- again, so a slow completion never leads to a second one; one taken again since (a newer
-- attempt) belongs to its new holder, and the stale holder's ack changes nothing.
--
-- KEYS[1]  leases  zset  the shard's leases ("ref|callbackId" -> deadline ms)
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  events_maxlen  bound of the shard's event stream (then events are dropped and counted)
-- ARGV[4]  done_ms        how long a finished callback id stays deduplicated
-- ARGV[5]  note           recorded in history with the completion ("" = none), e.g. HubSpot
--                         reporting it already completed by an earlier request
-- ARGV[6..] triples: ref, callbackId, attempt (the holder's fencing token, from take)
-- Returns the number of items acknowledged (items already finished, or taken again since, are
-- skipped)

local leases_key = KEYS[1]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local maxlen = ARGV[3]
local done_ms = tonumber(ARGV[4])
local note = ARGV[5]
local first_triple = 6

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)

local acked = 0
local by_queue = {}
for i = first_triple, #ARGV, 3 do
  local ref, cb, att = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local pol = split_ref(ref)
  if finish(leases_key, prefix, policy_keys(prefix, pol), ref, cb, att, now_ms + done_ms, "acked") then
    acked = acked + 1
    local group = by_queue[ref]
    if not group then group = {}; by_queue[ref] = group end
    group[#group + 1] = cb
  end
end
for ref, cbs in pairs(by_queue) do
  local pol, qid = split_ref(ref)
  local event = { "t", "done", "pol", pol, "q", qid, "ts", fmt(now), "cbs", id_list(cbs) }
  if note ~= "" then
    event[#event + 1] = "note"
    event[#event + 1] = note
  end
  emit(prefix, maxlen, event)
end
return acked
