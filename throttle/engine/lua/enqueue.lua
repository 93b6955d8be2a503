-- enqueue.lua: accept one execution into its queue (the webhook's single round trip).
-- Drops a duplicate callbackId (HubSpot retries), refuses when the queue is over the depth
-- that fits in the expiration (only for overflow Continue/Fail), appends to the queue (an
-- execution with a priority of 1-9 goes into the queue's priority set instead, at its score:
-- arrival minus priority x step, see throttle/engine/priority.py), marks the
-- queue due in the shard's schedule (ZADD NX in the same script: the policy's keys and the
-- shard's schedule share one hash tag, so this is one slot on Redis Cluster and no wake-up can be
-- lost between two commands), and appends a "received" history event.
--
-- It never writes the policy's parameters (the registry's reconcile is their one writer). When
-- they are missing (Redis lost them; the global default's first execution for a portal) or older
-- than the caller's copy, the execution is still queued — the take holds a queue without
-- parameters — and the policy is added to the shard's `awaiting` set, where the policy's writer
-- (the operator, the local reconciler) finds it and writes them; apply_policy.lua removes it.
--
-- KEYS[1]  due      zset  the shard's due schedule (ref -> due ms)
-- KEYS[2]  params   hash  the policy's parameters (may be missing, see above)
-- KEYS[3]  meta     hash  callbackId -> "seq,enqueued_us,expires_us,attempts,qid"
--                         (queued or in flight)
-- KEYS[4]  done     zset  callbackId -> forget-after ms (finished; still deduplicated)
-- KEYS[5]  queues   set   the policy's queue ids
-- KEYS[6]  list     list  the queue (RPUSH here, released from the head)
-- KEYS[7]  state    hash  the queue's rate state (only its seq counter is used here)
-- KEYS[8]  stats    hash  the policy's counters
-- KEYS[9]  awaiting set   the shard's policies waiting for (current) parameters
-- KEYS[10] pq       zset  the queue's executions of priority 1-9 -> score
-- KEYS[11] prioritized set the shard's queues that held a priority (reap.lua reschedules them)
-- ARGV[1]  now_offset_ms   added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix          the shard key prefix "throttle:{tN}:" (for the event stream)
-- ARGV[3]  ref             queue ref "portal:name:qid"
-- ARGV[4]  qid             queue id
-- ARGV[5]  callback_id
-- ARGV[6]  expiration_ms   the policy's expiration (item expires at enqueued + this)
-- ARGV[7]  revision        registry revision of the caller's policy (newer than the stored
--                          parameters' = they are awaited)
-- ARGV[8]  max_depth       refuse (overflow) when the queue already holds this many; -1 = never
-- ARGV[9]  events_maxlen   bound of the shard's event stream (then events are dropped and counted)
-- ARGV[10] enqueued_us     original arrival time when rebuilding from history (recover); 0 = now
-- ARGV[11] event           the "received" event's JSON body (workflow, action, object, inputs)
-- ARGV[12] priority        the priority tag: "" none given (meta exactly as before priorities),
--                          "N" level N, "0!" unreadable (held as 0); levels 1-9 go to `pq`
-- Returns {status, depth}
--   status  1 queued, 0 duplicate, 2 overflow (not queued), 3 already expired (not queued)
--   depth   queue length after the call (list and priority set)
--
-- Nothing here reads the queue's rate state: the caller decides overflow from max_depth (what
-- the policy can release within its expiration), so the webhook's one round trip stays cheap.

local due_key, params_key, meta_key, done_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queues_key, list_key, state_key, stats_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local awaiting_key, pq_key, prioritized_key = KEYS[9], KEYS[10], KEYS[11]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local ref = ARGV[3]
local qid = ARGV[4]
local cb = ARGV[5]
local expiration_ms = tonumber(ARGV[6])
local revision = tonumber(ARGV[7])
local max_depth = tonumber(ARGV[8])
local maxlen = ARGV[9]
local enqueued = tonumber(ARGV[10])
local body = ARGV[11]
local tag = ARGV[12]
local level = tag_level(tag)

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)

-- lim: present once the policy was applied; rev: which revision; paused: hold, no schedule
local p = redis.call("HMGET", params_key, "lim", "rev", "paused")
local pol = split_ref(ref)
if not p[1] or tonumber(p[2] or "0") < revision then
  redis.call("SADD", awaiting_key, pol)
end

if redis.call("HEXISTS", meta_key, cb) == 1 or redis.call("ZSCORE", done_key, cb) then
  return { 0, redis.call("LLEN", list_key) + redis.call("ZCARD", pq_key) }
end

local depth = redis.call("LLEN", list_key) + redis.call("ZCARD", pq_key)
if max_depth >= 0 and depth >= max_depth then
  return { 2, depth }
end

if enqueued <= 0 then enqueued = now end
local expires = enqueued + expiration_ms * 1000
if expires <= now then
  return { 3, depth }
end

-- forget finished callback ids whose dedupe window passed (amortised: a few per call)
local old = redis.call("ZRANGEBYSCORE", done_key, "-inf", now_ms, "LIMIT", 0, 16)
if #old > 0 then redis.call("ZREM", done_key, unpack(old)) end

local seq = redis.call("HINCRBY", state_key, "seq", 1)
redis.call("HSET", meta_key, cb, meta_format(seq, enqueued, expires, 0, qid, tag))
if level > 0 then
  redis.call("ZADD", pq_key, fmt(priority_score(enqueued, level)), cb)
  redis.call("SADD", prioritized_key, ref)
else
  redis.call("RPUSH", list_key, cb)
end
depth = depth + 1
redis.call("SADD", queues_key, qid)
if p[3] ~= "1" then
  redis.call("ZADD", due_key, "NX", now_ms, ref)
end
redis.call("HINCRBY", stats_key, "received", 1)
emit(prefix, maxlen, { "t", "recv", "pol", pol, "q", qid, "cb", cb, "ts", fmt(now),
                       "enq", fmt(enqueued), "exp", fmt(expires), "body", body })
return { 1, depth }
