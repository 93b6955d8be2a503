-- apply_policy.lua: write a policy's parameters (idempotent, ordered by registry revision).
-- A copy older than the one stored never overwrites it; the same content is a no-op. When the
-- content changes, every non-empty queue of the policy is scheduled now, so a new rate, a
-- resume or a new window takes effect on the next take (the GCRA state carries over: no
-- catch-up burst). Pausing drops the queues from the schedule.
--
-- KEYS[1]  params    hash  the policy's parameters
-- KEYS[2]  queues    set   the policy's queue ids
-- KEYS[3]  due       zset  the shard's due schedule
-- KEYS[4]  awaiting  set   the shard's policies waiting for parameters (see enqueue.lua); the
--                          policy leaves it unless the call is stale
-- KEYS[5]  inline    hash  the shard's inline queues' entries (engine/inline.py)
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  policy         "portal:name"
-- ARGV[4]  revision       registry revision of this copy (0 = unknown: applies unless newer stored)
-- ARGV[5]  hash           content hash of the spec
-- ARGV[6]  entry          an inline queue's entry JSON, stored under `policy` in KEYS[5] ("" =
--                         not an inline queue: KEYS[5] untouched)
-- ARGV[7]  not_before_us  an inline queue's first release (0 = none): its queue "shared" holds
--                         nothing before it (the queue state's `hold`, which take.lua honours)
-- ARGV[8..] field, value pairs (policy_encoding.redis_fields)
-- Returns 0 stale (a newer revision is stored; nothing written), 1 unchanged, 2 written

local params_key, queues_key, due_key, awaiting_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local inline_key = KEYS[5]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local pol = ARGV[3]
local revision = tonumber(ARGV[4])
local hash = ARGV[5]
local entry = ARGV[6]
local not_before_us = tonumber(ARGV[7])
local first_field = 8

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)

local stored = redis.call("HMGET", params_key, "rev", "hash", "lim")
local stored_rev = tonumber(stored[1] or "0")
if stored[3] and stored_rev > revision then return 0 end
redis.call("SREM", awaiting_key, pol)
if entry ~= "" then redis.call("HSET", inline_key, pol, entry) end
if not_before_us > 0 then
  local _, first_state = queue_keys(prefix, pol .. ":shared")
  if not_before_us > tonumber(redis.call("HGET", first_state, "hold") or "0") then
    redis.call("HSET", first_state, "hold", fmt(not_before_us))
  end
end
if stored[3] and stored[2] == hash then
  if revision > stored_rev then redis.call("HSET", params_key, "rev", fmt(revision)) end
  return 1
end

redis.call("DEL", params_key)
local fields = { "rev", fmt(math.max(revision, stored_rev)), "hash", hash }
for i = first_field, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call("HSET", params_key, unpack(fields))

local paused = redis.call("HGET", params_key, "paused") == "1"
local qids = redis.call("SMEMBERS", queues_key)
for i = 1, #qids do
  local ref = pol .. ":" .. qids[i]
  if paused then
    redis.call("ZREM", due_key, ref)
  elseif queue_depth(prefix, ref) > 0 then
    redis.call("ZADD", due_key, now_ms, ref)
  end
end
return 2
