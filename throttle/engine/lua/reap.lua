-- reap.lua: leases that ran out (their dispatcher died or stalled) go back to the head of their
-- queue, oldest first (one with a priority back into the queue's priority set at its score),
-- and the queue is scheduled so another dispatcher releases them. Then every queue of the
-- shard's `prioritized` set that holds executions but has no due time is scheduled again (a
-- release-0.1.0 take, during a rollout, reads only the list and unschedules a queue whose list
-- ran empty), and those that hold none leave the set.
--
-- KEYS[1]  leases  zset  the shard's leases ("ref|callbackId" -> deadline ms)
-- KEYS[2]  due     zset  the shard's due schedule
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  events_maxlen  bound of the shard's event stream (then events are dropped and counted)
-- ARGV[4]  limit          return at most this many leases in this call
-- Returns the number of items returned to their queues (the rescheduled queues not counted)

local leases_key, due_key = KEYS[1], KEYS[2]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local maxlen = ARGV[3]
local limit = tonumber(ARGV[4])

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)

local expired = redis.call("ZRANGEBYSCORE", leases_key, "-inf", now_ms, "LIMIT", 0, limit)
local groups, cbs_by_queue = {}, {}
local count = 0
for i = 1, #expired do
  local member = expired[i]
  redis.call("ZREM", leases_key, member)
  local ref, cb = lease_parse(member)
  local pol = split_ref(ref)
  local pk = policy_keys(prefix, pol)
  redis.call("HINCRBY", pk.stats, "inflight", -1)
  local m = redis.call("HGET", pk.meta, cb)
  if m then
    if not groups[ref] then groups[ref] = {}; cbs_by_queue[ref] = {} end
    local g = groups[ref]
    g[#g + 1] = push_back_item(m, cb)
    local c = cbs_by_queue[ref]
    c[#c + 1] = cb
    count = count + 1
  end
end
push_back(prefix, groups)
for ref, cbs in pairs(cbs_by_queue) do
  local pol, qid = split_ref(ref)
  if redis.call("HGET", policy_keys(prefix, pol).params, "paused") ~= "1" then
    redis.call("ZADD", due_key, "NX", now_ms, ref)
  end
  emit(prefix, maxlen, { "t", "reap", "pol", pol, "q", qid, "ts", fmt(now),
                         "cbs", id_list(cbs) })
end

local prioritized = prefix .. "prioritized"
local pqueues = redis.call("SMEMBERS", prioritized)
for i = 1, #pqueues do
  local ref = pqueues[i]
  local _, _, pq = queue_keys(prefix, ref)
  local params = policy_keys(prefix, (split_ref(ref))).params
  local p = redis.call("HMGET", params, "lim", "paused")
  if not p[1] or redis.call("ZCARD", pq) == 0 then
    -- empty, or without parameters (apply_policy.lua schedules it when it writes them)
    redis.call("SREM", prioritized, ref)
  elseif p[2] ~= "1" then
    redis.call("ZADD", due_key, "NX", now_ms, ref)
  end
end
return count
