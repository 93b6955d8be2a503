-- purge.lua: a portal's data is being purged (`throttle portal purge`, or the uninstall grace
-- period ran out): every key of one policy goes at once, whatever it still holds. Unlike
-- retire.lua nothing is released: queued executions are dropped, never sent to HubSpot, and
-- the leases of executions in flight are removed too, so a dispatcher still holding one finds
-- it gone when it renews (and sends nothing) and the reaper never puts it back.
--
-- KEYS[1]  params    hash  the policy's parameters
-- KEYS[2]  queues    set   the policy's queue ids
-- KEYS[3]  meta      hash  the policy's queued / in-flight items
-- KEYS[4]  done      zset  finished ids (dedupe)
-- KEYS[5]  stats     hash  the policy's counters
-- KEYS[6]  due       zset  the shard's due schedule
-- KEYS[7]  leases    zset  the shard's leases ("ref|callbackId" -> deadline ms)
-- KEYS[8]  awaiting  set   the shard's policies waiting for parameters
-- ARGV[1]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[2]  policy         "portal:name"
-- Returns {executions dropped (queued or in flight), leases removed}

local params_key, queues_key, meta_key, done_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stats_key, due_key, leases_key, awaiting_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local prefix = ARGV[1]
local pol = ARGV[2]

local dropped = redis.call("HLEN", meta_key)
local qids = redis.call("SMEMBERS", queues_key)
for i = 1, #qids do
  local ref = pol .. ":" .. qids[i]
  redis.call("DEL", queue_keys(prefix, ref))
  redis.call("ZREM", due_key, ref)
end
-- a lease member is "ref|callbackId": it is the policy's when its ref is
local removed = 0
local members = redis.call("ZRANGE", leases_key, 0, -1)
for i = 1, #members do
  local m = members[i]
  local bar = string.find(m, "|", 1, true)
  if bar and split_ref(string.sub(m, 1, bar - 1)) == pol then
    redis.call("ZREM", leases_key, m)
    removed = removed + 1
  end
end
redis.call("DEL", params_key, queues_key, meta_key, done_key, stats_key)
redis.call("SREM", awaiting_key, pol)
return { dropped, removed }
