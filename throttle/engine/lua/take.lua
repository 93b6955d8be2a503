-- take.lua: release what the due queues of one shard may release now, atomically.
-- For each queue due in the shard's schedule (oldest due first): applies pause, hold (retry
-- backoff), schedule windows, the daily cap (reset at local midnight) and GCRA with burst;
-- pops that many items from the head, the lowest score first across the queue's list
-- (priority 0) and its priority set (throttle/engine/priority.py has the rule), dropping expired
-- ones as "expired", leases them in the
-- shard's lease index under their new attempt number (the holder's fencing token), and sets the
-- queue's next due time exactly (or drops it from the schedule when it is empty or paused). Many
-- dispatchers may call this at once: each item goes to one. A retiring policy with flush =
-- SUCCESS / FAIL_CONTINUE releases everything at once with that state instead.
--
-- Every release is charged against the rate (GCRA), retries too: a retry goes on in the workflow
-- when it is released, so the policy's limit holds for what goes through in any period. The
-- daily cap counts each execution once: a release HubSpot did not take gives its place back
-- (requeue.lua).
--
-- KEYS[1]  due     zset   the shard's due schedule (ref -> due ms)
-- KEYS[2]  leases  zset   the shard's leases ("ref|callbackId" -> deadline ms)
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  events_maxlen  bound of the shard's event stream (then events are dropped and counted)
-- ARGV[4]  lease_ms       how long a dispatcher may hold released items before they return
-- ARGV[5]  max_items      release at most this many items in this call
-- ARGV[6]  queue_quota    and at most this many from one queue (fairness: a deep queue goes
--                         back in the schedule at "now", behind queues that were due earlier)
-- ARGV[7]  max_queues     visit at most this many due queues
-- ARGV[8]  done_ms        how long an expired callback id stays deduplicated
-- ARGV[9]  min_hold_ms    release nothing younger than this (HubSpot must have taken the BLOCK
--                         answer before the completion arrives); 0 = no minimum
-- Returns {now_us, shard_next_due_ms (a string with a fraction; -1 = nothing scheduled),
--          expired, released...}
--   where released is 7 values per item: ref, callbackId, enqueued_us, attempts (this one
--   included), execution state (SUCCESS unless flushed), lag_ms (how late the queue was taken),
--   priority tag ("" none given, "N", "0!" unreadable; engine/priority.py)

local due_key, leases_key = KEYS[1], KEYS[2]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local maxlen = ARGV[3]
local lease_ms = tonumber(ARGV[4])
local max_items = tonumber(ARGV[5])
local quota = tonumber(ARGV[6])
local max_queues = tonumber(ARGV[7])
local done_ms = tonumber(ARGV[8])
local min_hold_ms = tonumber(ARGV[9])

local now = clock_us(now_offset_ms)
local now_ms = math.floor(now / 1000)
local now_s = now / 1000000
local min_hold = min_hold_ms * 1000
local budget = max_items -- what this call may still release

local out = { fmt(now), -1, 0 }
local expired_total = 0
local params_cache = {}

-- due scores are milliseconds with a microsecond fraction, so a queue is taken exactly on time
local due = redis.call("ZRANGEBYSCORE", due_key, "-inf", string.format("%.3f", now / 1000),
                       "WITHSCORES", "LIMIT", 0, max_queues)
for i = 1, #due, 2 do
  if budget <= 0 then break end
  local ref, due_ms = due[i], tonumber(due[i + 1])
  local pol, qid = split_ref(ref)
  local pk = policy_keys(prefix, pol)
  local p = params_cache[pol]
  if p == nil then
    p = hash_table(pk.params)
    if p.lim then
      p.tz_s = tz_parse(p.stz)
      p.wins_t = wins_parse(p.wins)
      p.tz_c = tz_parse(p.ctz)
    end
    params_cache[pol] = p
  end
  local list, state, pq = queue_keys(prefix, ref)
  local next_due = nil -- us; nil = drop from schedule
  local released = {}
  local attempts = {}
  local flush = p.flush or ""

  if p.lim == nil then
    -- no parameters (not applied yet, or lost with Redis' data): look again in a second
    next_due = now + 1000000
  elseif flush == "" and p.paused == "1" then
    next_due = nil
  else
    local st = hash_table(state)
    local lim, per, burst = tonumber(p.lim), tonumber(p.per), tonumber(p.burst)
    local a, n = gcra_load(st, lim, per, now)
    local cap = tonumber(p.cap)
    local cday, ccnt = tonumber(st.cday or "-1"), tonumber(st.ccnt or "0")
    local allowed = 0
    local blocked_until = nil
    local hold = tonumber(st.hold or "0")
    if flush ~= "" then
      allowed = quota
    elseif hold > now then
      blocked_until = hold
    elseif #p.wins_t > 0 and not in_window(p.wins_t, p.tz_s, now_s) then
      local s = next_window_start(p.wins_t, p.tz_s, now_s)
      blocked_until = s and math.ceil(s * 1000000) or now + 3600000000
    else
      allowed = gcra_allowed(a, n, lim, per, burst, now)
      if cap > 0 then
        local day = local_day_minute(p.tz_c, now_s)
        if day ~= cday then cday = day; ccnt = 0 end
        if ccnt >= cap then
          allowed = 0
          blocked_until = math.ceil(next_local_midnight(p.tz_c, now_s) * 1000000)
        elseif allowed > cap - ccnt then
          allowed = cap - ccnt
        end
      end
    end
    local k = math.min(allowed, quota, budget)
    local expired = {}
    local young_until = nil
    local lag = math.floor(now / 1000 - due_ms)
    -- The next to go is the lower score of two heads (throttle/engine/priority.py): the list's
    -- (priority 0, first in first out; popped, and pushed back if it does not go) and the
    -- priority set's (read in chunks from rank `zn`; what went, expired or was already finished
    -- is removed at the end, ranks 0 .. zn - 1).
    local lcb, lm, lscore, list_done = nil, nil, 0, false
    local zs, zi, zn, zcb, zm, zscore, z_done = {}, 1, 0, nil, nil, 0, false
    while #released < k and #expired < 1000 do
      while not lcb and not list_done do
        local cb = redis.call("LPOP", list)
        if not cb then
          list_done = true
        else
          local m = redis.call("HGET", pk.meta, cb)
          if m then -- else: finished meanwhile (ack of a reaped execution); dropped
            local _, enq, _, _, _, tag = meta_parse(m)
            lcb, lm, lscore = cb, m, priority_score(enq, tag_level(tag))
          end
        end
      end
      while not zcb and not z_done do
        if zi > #zs then
          zs = redis.call("ZRANGE", pq, zn, zn + math.max(1, k - #released) - 1, "WITHSCORES")
          zi = 1
          if #zs == 0 then z_done = true end
        end
        if not z_done then
          local m = redis.call("HGET", pk.meta, zs[zi])
          if m then
            zcb, zm, zscore = zs[zi], m, tonumber(zs[zi + 1])
          else
            zi, zn = zi + 2, zn + 1
          end
        end
      end
      local from_list
      if lcb and zcb then
        from_list = lscore < zscore or (lscore == zscore and lcb < zcb)
      elseif lcb or zcb then
        from_list = lcb ~= nil
      else
        break
      end
      local cb, m = zcb, zm
      if from_list then cb, m = lcb, lm end
      local seq, enq, exp, att, mq, tag = meta_parse(m)
      if flush == "" and exp > now and enq + min_hold > now then
        -- too young: it stays at its place; the queue is due when it is old enough
        young_until = enq + min_hold
        break
      end
      if from_list then lcb = nil else zcb, zi, zn = nil, zi + 2, zn + 1 end
      if exp <= now then
        expired[#expired + 1] = cb
        redis.call("HDEL", pk.meta, cb)
        redis.call("ZADD", pk.done, fmt(now_ms + done_ms), cb)
      else
        att = att + 1
        redis.call("HSET", pk.meta, cb, meta_format(seq, enq, exp, att, mq, tag))
        redis.call("ZADD", leases_key, fmt(now_ms + lease_ms), lease_member(ref, cb))
        released[#released + 1] = cb
        attempts[#attempts + 1] = att
        out[#out + 1] = ref
        out[#out + 1] = cb
        out[#out + 1] = fmt(enq)
        out[#out + 1] = att
        out[#out + 1] = flush ~= "" and flush or "SUCCESS"
        out[#out + 1] = lag
        out[#out + 1] = tag
      end
    end
    if lcb then redis.call("LPUSH", list, lcb) end
    if zn > 0 then redis.call("ZREMRANGEBYRANK", pq, 0, zn - 1) end
    local r = #released
    budget = budget - r
    if #expired > 0 then
      expired_total = expired_total + #expired
      redis.call("HINCRBY", pk.stats, "expired", #expired)
      emit(prefix, maxlen, { "t", "exp", "pol", pol, "q", qid, "ts", fmt(now),
                             "cbs", id_list(expired) })
    end
    if r > 0 then
      if flush == "" then
        a, n = gcra_normalize(a, n + r, lim, per)
        if cap > 0 then ccnt = ccnt + r end
      end
      redis.call("HINCRBY", pk.stats, "released", r)
      redis.call("HINCRBY", pk.stats, "inflight", r)
      redis.call("HSET", pk.stats, "last_release_us", fmt(now))
      emit(prefix, maxlen, { "t", "rel", "pol", pol, "q", qid, "ts", fmt(now),
                             "cbs", id_list(released), "atts", table.concat(attempts, ",") })
    end
    redis.call("HSET", state, "a", fmt(a), "n", fmt(n), "lim", p.lim, "per", p.per,
               "cday", fmt(cday), "ccnt", fmt(ccnt))
    if queue_depth(prefix, ref) > 0 then
      if blocked_until then
        next_due = blocked_until
      elseif flush ~= "" or r >= k and k < allowed then
        next_due = now -- stopped by quota or budget, not by the rate
      else
        next_due = math.max(now, gcra_next(a, n, lim, per, burst))
        if cap > 0 and ccnt >= cap then
          next_due = math.max(next_due, math.ceil(next_local_midnight(p.tz_c, now_s) * 1000000))
        end
        if #p.wins_t > 0 and not in_window(p.wins_t, p.tz_s, next_due / 1000000) then
          local s = next_window_start(p.wins_t, p.tz_s, next_due / 1000000)
          next_due = s and math.ceil(s * 1000000) or now + 3600000000
        end
      end
      if young_until and next_due < young_until then next_due = young_until end
    end
  end

  if next_due then
    redis.call("ZADD", due_key, string.format("%.3f", next_due / 1000), ref)
  else
    redis.call("ZREM", due_key, ref)
  end
end

out[3] = expired_total
local first = redis.call("ZRANGE", due_key, 0, 0, "WITHSCORES")
if #first > 0 then out[2] = first[2] end
return out
