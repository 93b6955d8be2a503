-- retire.lua: a policy is being deleted. Drain keeps releasing at its rate until empty (and
-- resumes it if it was paused, or deletion would wait forever);
-- SUCCESS / FAIL_CONTINUE releases everything at once with that state (the dispatcher completes
-- them so). When nothing is queued or in flight any more, every key of the policy is deleted.
-- Call it again until it returns 0.
--
-- KEYS[1]  params    hash  the policy's parameters
-- KEYS[2]  queues    set   the policy's queue ids
-- KEYS[3]  due       zset  the shard's due schedule
-- KEYS[4]  meta      hash  the policy's queued / in-flight items
-- KEYS[5]  done      zset  finished ids (dedupe)
-- KEYS[6]  stats     hash  the policy's counters
-- KEYS[7]  awaiting  set   the shard's policies waiting for parameters (left when deleted)
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  policy         "portal:name"
-- ARGV[4]  mode           Drain | SUCCESS | FAIL_CONTINUE
-- Returns the number of items still queued or in flight (0 = retired and deleted)

local params_key, queues_key, due_key = KEYS[1], KEYS[2], KEYS[3]
local meta_key, done_key, stats_key, awaiting_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local pol = ARGV[3]
local mode = ARGV[4]

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)

local remaining = redis.call("HLEN", meta_key)
local qids = redis.call("SMEMBERS", queues_key)
if remaining == 0 then
  for i = 1, #qids do
    local ref = pol .. ":" .. qids[i]
    redis.call("DEL", queue_keys(prefix, ref))
    redis.call("ZREM", due_key, ref)
  end
  redis.call("DEL", params_key, queues_key, meta_key, done_key, stats_key)
  redis.call("SREM", awaiting_key, pol)
  return 0
end
if redis.call("EXISTS", params_key) == 1 then
  -- a deleted policy must wind down even if it was paused: Drain resumes it at its rate
  redis.call("HSET", params_key, "retiring", mode, "flush", mode == "Drain" and "" or mode,
             "paused", "0")
  for i = 1, #qids do
    local ref = pol .. ":" .. qids[i]
    if queue_depth(prefix, ref) > 0 then
      if mode == "Drain" then
        redis.call("ZADD", due_key, "NX", now_ms, ref)
      else
        redis.call("ZADD", due_key, now_ms, ref)
      end
    end
  end
end
return remaining
