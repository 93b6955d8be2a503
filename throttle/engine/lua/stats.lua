-- stats.lua: one policy's figures (read only).
--
-- KEYS[1]  queues  set   the policy's queue ids
-- KEYS[2]  meta    hash  the policy's queued / in-flight items
-- KEYS[3]  stats   hash  the policy's counters
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  policy         "portal:name"
-- Returns {now_us, depth, oldest_enqueued_us (0 = none), queues, counters...} where counters
-- are the stats hash as field, value pairs (received, released, acked, failed, expired,
-- requeued, inflight, last_release_us)

local queues_key, meta_key, stats_key = KEYS[1], KEYS[2], KEYS[3]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local pol = ARGV[3]

local now = clock_us(now_offset_ms)
local qids = redis.call("SMEMBERS", queues_key)
local depth, oldest = 0, 0
for i = 1, #qids do
  local list, _, pq = queue_keys(prefix, pol .. ":" .. qids[i])
  depth = depth + redis.call("LLEN", list) + redis.call("ZCARD", pq)
  -- the oldest: the list's head; of the priority set, its head (the next to go)
  local heads = { redis.call("LINDEX", list, 0), redis.call("ZRANGE", pq, 0, 0)[1] }
  for j = 1, 2 do
    local m = heads[j] and redis.call("HGET", meta_key, heads[j])
    if m then
      local _, enq = meta_parse(m)
      if oldest == 0 or enq < oldest then oldest = enq end
    end
  end
end
local out = { fmt(now), depth, fmt(oldest), #qids }
local counters = redis.call("HGETALL", stats_key)
for i = 1, #counters do out[#out + 1] = counters[i] end
return out
