-- stats.lua: the figures of many policies of one shard (read only), in one call: a status
-- reader of 1,000 policies sends one call per shard instead of one per policy.
--
-- KEYS[3i-2]  queues  set   policy i's queue ids
-- KEYS[3i-1]  meta    hash  policy i's queued / in-flight items
-- KEYS[3i]    stats   hash  policy i's counters
-- ARGV[1]     now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]     prefix         the shard key prefix "throttle:{tN}:" (every policy's shard)
-- ARGV[1+2i]  policy i       "portal:name"
-- ARGV[2+2i]  per_queue i    "1": also each queue's daily count and depth; "0": not
-- Returns one array per policy, in order: {now_us, depth, oldest_enqueued_us (0 = none), queues,
-- counters, per_queue} where counters is the stats hash as field, value pairs (received,
-- released, acked, failed, expired, requeued, inflight, last_release_us) and per_queue, when
-- asked, holds three values per queue: its cap day (-1 = none yet), its count on that day
-- (take.lua's `cday` / `ccnt`) and its depth

local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local first_policy = 3

local now = clock_us(now_offset_ms)
local out = {}
for i = 1, (#ARGV - first_policy + 1) / 2 do
  local queues_key, meta_key, stats_key = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local pol = ARGV[first_policy + 2 * i - 2]
  local per_queue = ARGV[first_policy + 2 * i - 1] == "1"
  local qids = redis.call("SMEMBERS", queues_key)
  local depth, oldest = 0, 0
  local days = {}
  for q = 1, #qids do
    local list, state, pq = queue_keys(prefix, pol .. ":" .. qids[q])
    local n = redis.call("LLEN", list) + redis.call("ZCARD", pq)
    depth = depth + n
    -- the oldest: the list's head; of the priority set, its head (the next to go)
    local heads = { redis.call("LINDEX", list, 0), redis.call("ZRANGE", pq, 0, 0)[1] }
    for j = 1, 2 do
      local m = heads[j] and redis.call("HGET", meta_key, heads[j])
      if m then
        local _, enq = meta_parse(m)
        if oldest == 0 or enq < oldest then oldest = enq end
      end
    end
    if per_queue then
      local cap = redis.call("HMGET", state, "cday", "ccnt")
      days[#days + 1] = cap[1] or "-1"
      days[#days + 1] = cap[2] or "0"
      days[#days + 1] = n
    end
  end
  out[i] = { fmt(now), depth, fmt(oldest), #qids, redis.call("HGETALL", stats_key), days }
end
return out
