-- requeue.lua: released executions that failed in a retryable way go back to the head of their
-- queue in their original order, and the queue waits `delay_ms` before releasing again.
-- HubSpot did not take them, so the workflow did not go on: their release gives back its place
-- in the daily count (take.lua counts the release that goes through instead), and a spell of
-- HubSpot errors costs the day's cap nothing. A release of a retiring policy's flush was never
-- counted and gives nothing back.
--
-- KEYS[1]  leases  zset  the shard's leases ("ref|callbackId" -> deadline ms)
-- KEYS[2]  due     zset  the shard's due schedule
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  events_maxlen  bound of the shard's event stream (then events are dropped and counted)
-- ARGV[4]  delay_ms       backoff before the queue releases again (0 = as the rate allows)
-- ARGV[5]  reason         why (recorded in history as the last error)
-- ARGV[6..] triples: ref, callbackId, attempt (the holder's fencing token, from take)
-- Returns the number of items put back (items whose lease of that attempt is gone are skipped:
-- the reaper returned them, or they were taken again since and belong to the new holder)

local leases_key, due_key = KEYS[1], KEYS[2]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local maxlen = ARGV[3]
local delay_ms = tonumber(ARGV[4])
local reason = ARGV[5]
local first_triple = 6

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)

local groups, cbs_by_queue = {}, {}
local count = 0
for i = first_triple, #ARGV, 3 do
  local ref, cb = ARGV[i], ARGV[i + 1]
  local pk = policy_keys(prefix, (split_ref(ref)))
  if holds(pk, cb, ARGV[i + 2]) and redis.call("ZREM", leases_key, lease_member(ref, cb)) == 1 then
    local m = redis.call("HGET", pk.meta, cb)
    redis.call("HINCRBY", pk.stats, "inflight", -1)
    if m then
      if not groups[ref] then groups[ref] = {}; cbs_by_queue[ref] = {} end
      local g = groups[ref]
      g[#g + 1] = push_back_item(m, cb)
      local c = cbs_by_queue[ref]
      c[#c + 1] = cb
      redis.call("HINCRBY", pk.stats, "requeued", 1)
      count = count + 1
    end
  end
end
push_back(prefix, groups)
for ref, cbs in pairs(cbs_by_queue) do
  local pol, qid = split_ref(ref)
  local _, state = queue_keys(prefix, ref)
  local due_ms = now_ms + delay_ms
  if delay_ms > 0 then
    redis.call("HSET", state, "hold", fmt(due_ms * 1000))
  end
  local params = policy_keys(prefix, pol).params
  if (redis.call("HGET", params, "flush") or "") == "" then
    refund_daily(state, #cbs)
  end
  if redis.call("HGET", params, "paused") ~= "1" then
    redis.call("ZADD", due_key, fmt(due_ms), ref)
  end
  emit(prefix, maxlen, { "t", "retry", "pol", pol, "q", qid, "ts", fmt(now),
                         "cbs", id_list(cbs), "err", reason })
end
return count
