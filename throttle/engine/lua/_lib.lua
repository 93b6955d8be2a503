-- _lib.lua: helpers shared by every script. throttle/engine/scripts.py prepends this file to
-- each script before loading it, so it has no KEYS, ARGV or return value of its own.
--
-- Conventions: times are integers in microseconds (`_us`) or milliseconds (`_ms`) since the
-- epoch, read from Redis' own clock (TIME) plus a debug offset that only tests set. Numbers
-- written back to Redis go through fmt() because Lua's default number-to-string conversion keeps
-- only 14 significant digits. Key suffixes mirror throttle/engine/keys.py exactly.

local function fmt(x)
  return string.format("%d", x)
end

-- offset_ms: milliseconds added to Redis' TIME (production: 0), or "@<epoch us>": a clock a
-- test pinned (see scripts.ClockShift).
local function clock_us(offset_ms)
  if string.sub(offset_ms, 1, 1) == "@" then
    return tonumber(string.sub(offset_ms, 2))
  end
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + math.floor(tonumber(offset_ms) * 1000)
end

local function policy_keys(prefix, pol)
  local b = prefix .. "p:" .. pol .. ":"
  return { params = b .. "params", queues = b .. "queues", meta = b .. "meta",
           done = b .. "done", stats = b .. "stats" }
end

-- list (priority 0, FIFO), state, pq (priorities 1-9, by score)
local function queue_keys(prefix, ref)
  local b = prefix .. "q:" .. ref .. ":"
  return b .. "list", b .. "state", b .. "pq"
end

-- Seconds of arrival one priority level is worth, in microseconds: throttle/engine/priority.py's
-- STEP_SECONDS (a test holds them equal). Release order is the lowest score first.
local PRIORITY_STEP_US = 3600000000

local function priority_score(enq, level)
  return enq - level * PRIORITY_STEP_US
end

-- The priority tag meta carries after the qid ("" none, "N", "0!" unreadable) -> level
local function tag_level(tag)
  return tonumber(string.match(tag or "", "^(%d)") or "0")
end

-- Queued executions of a queue, both forms: the list's and the priority set's
local function queue_depth(prefix, ref)
  local list, _, pq = queue_keys(prefix, ref)
  return redis.call("LLEN", list) + redis.call("ZCARD", pq)
end

-- "portal:name:qid" -> "portal:name", "qid"
local function split_ref(ref)
  return string.match(ref, "^(.*):([^:]*)$")
end

-- meta value "seq,enqueued_us,expires_us,attempts,qid" plus "/p<tag>" when the execution
-- carried a priority (release 0.1.0 reads that suffix as part of the qid and writes it back as
-- it was). Returns seq, enq, exp, att, qid, tag ("" when none).
local function meta_parse(m)
  local seq, enq, exp, att, rest = string.match(m, "^(%d+),(%d+),(%d+),(%d+),(.*)$")
  local qid, tag = string.match(rest, "^(.*)/p(%d!?)$")
  if not qid then qid, tag = rest, "" end
  return tonumber(seq), tonumber(enq), tonumber(exp), tonumber(att), qid, tag
end

local function meta_format(seq, enq, exp, att, qid, tag)
  local m = fmt(seq) .. "," .. fmt(enq) .. "," .. fmt(exp) .. "," .. fmt(att) .. "," .. qid
  if tag and tag ~= "" then m = m .. "/p" .. tag end
  return m
end

local function hash_table(key)
  local flat = redis.call("HGETALL", key)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end

-- Append one history event to the shard's stream. The stream is the buffer between the engine
-- and PostgreSQL: history writers delete what they committed, so its length is the backlog. When
-- it is full (PostgreSQL down for long) the event is dropped and counted in "evdropped" rather
-- than growing Redis without bound; releases never wait for history.
local function emit(prefix, maxlen, fields)
  local stream = prefix .. "events"
  if redis.call("XLEN", stream) >= tonumber(maxlen) then
    redis.call("INCR", prefix .. "evdropped")
    return
  end
  local args = { stream, "*" }
  for i = 1, #fields do args[#args + 1] = fields[i] end
  redis.call("XADD", unpack(args))
end

-- The "cbs" field of a history event: its callback ids joined with commas, the form release
-- 0.1.0's history writers read (old and new dispatchers share the streams during a rollout);
-- as a JSON array only when that form cannot carry them. HubSpot's callbackIds are opaque, so
-- one may hold a comma (which once split one id into two made-up executions) or start with "[".
-- throttle/history/folding.py's event_callback_ids reads both forms back.
local function id_list(ids)
  local joined = table.concat(ids, ",")
  if string.sub(joined, 1, 1) ~= "[" then
    local commas = select(2, string.gsub(joined, ",", ""))
    if commas == #ids - 1 then return joined end
  end
  return cjson.encode(ids)
end

-- A lease is one member of the shard's lease index: "ref|callbackId", the format release 0.1.0
-- reads too (old and new dispatchers share the index during a rollout). Its owner is fenced by
-- the attempt number (meta's `att`, raised by every take): a holder whose lease ran out and
-- whose execution was taken again since holds an older number, so `holds` refuses everything it
-- settles or renews, and the new holder's lease is untouched.
local function lease_member(ref, cb)
  return ref .. "|" .. cb
end

-- ref, callbackId of a lease member
local function lease_parse(member)
  return string.match(member, "^([^|]*)|(.*)$")
end

-- The attempt an execution is on (its owner's token), or nil once it is finished.
local function current_attempt(pk, cb)
  local m = redis.call("HGET", pk.meta, cb)
  if not m then return nil end
  local _, _, _, att = meta_parse(m)
  return att
end

-- Whether the holder of attempt `att` still owns the execution: it is unfinished and has not
-- been taken again since.
local function holds(pk, cb, att)
  return current_attempt(pk, cb) == tonumber(att)
end

-- Finish one execution for good (ack.lua, fail.lua) for the holder of attempt `att`: drop its
-- lease or, if the lease already ran out and the execution went back to its queue untaken, take
-- it out of the queue again, so a slow completion never leads to a second one; keep its id for
-- dedupe until done_until_ms and count it under `counter`. Returns false, changing nothing, when
-- it was already finished or has been taken again since (a stale owner).
local function finish(leases, prefix, pk, ref, cb, att, done_until_ms, counter)
  if not holds(pk, cb, att) then return false end
  local held = redis.call("ZREM", leases, lease_member(ref, cb)) == 1
  redis.call("HDEL", pk.meta, cb)
  if held then
    redis.call("HINCRBY", pk.stats, "inflight", -1)
  else
    local list, _, pq = queue_keys(prefix, ref)
    if redis.call("LREM", list, 1, cb) == 0 then redis.call("ZREM", pq, cb) end
  end
  redis.call("ZADD", pk.done, fmt(done_until_ms), cb)
  redis.call("HINCRBY", pk.stats, counter, 1)
  return true
end

-- Put items back at the head of their queues, oldest (lowest seq) first; one with a priority
-- of 1-9 goes back into the queue's priority set at its score (arrival and priority unchanged,
-- so it stands where it stood), and its queue into the shard's `prioritized` set (reap.lua).
-- groups: ref -> list of {seq, callbackId, enqueued_us, priority level}
local function push_back(prefix, groups)
  local prioritized = prefix .. "prioritized"
  for ref, items in pairs(groups) do
    table.sort(items, function(x, y) return x[1] > y[1] end)
    local list, _, pq = queue_keys(prefix, ref)
    local chunk = {}
    for i = 1, #items do
      local it = items[i]
      if it[4] > 0 then
        redis.call("ZADD", pq, fmt(priority_score(it[3], it[4])), it[2])
        redis.call("SADD", prioritized, ref)
      else
        chunk[#chunk + 1] = it[2]
        if #chunk == 500 then redis.call("LPUSH", list, unpack(chunk)); chunk = {} end
      end
    end
    if #chunk > 0 then redis.call("LPUSH", list, unpack(chunk)) end
  end
end

-- One item of push_back's groups, from its meta value.
local function push_back_item(m, cb)
  local seq, enq, _, _, _, tag = meta_parse(m)
  return { seq, cb, enq, tag_level(tag) }
end

-- Time zones: "t:o,t:o,..." = UTC second of each offset change and the offset (seconds) from
-- then on, computed from the IANA database by throttle.engine.policy_encoding.encode_transitions.
local function tz_parse(s)
  local tz = { ts = {}, os = {} }
  for t, o in string.gmatch(s or "", "(%-?%d+):(%-?%d+)") do
    tz.ts[#tz.ts + 1] = tonumber(t)
    tz.os[#tz.os + 1] = tonumber(o)
  end
  return tz
end

local function tz_offset(tz, t)
  local ts = tz.ts
  if #ts == 0 then return 0 end
  if t < ts[1] then return tz.os[1] end
  local lo, hi = 1, #ts
  while lo < hi do
    local mid = math.floor((lo + hi + 1) / 2)
    if ts[mid] <= t then lo = mid else hi = mid - 1 end
  end
  return tz.os[lo]
end

local function tz_next_change(tz, t)
  for i = 1, #tz.ts do
    if tz.ts[i] > t then return tz.ts[i] end
  end
  return nil
end

-- local day number (days since 1970-01-01) and minute of day (float) at UTC second t
local function local_day_minute(tz, t)
  local l = t + tz_offset(tz, math.floor(t))
  local day = math.floor(l / 86400)
  return day, (l - day * 86400) / 60
end

-- UTC second of local wall-clock second l (inside a DST gap: somewhere around it; callers check)
local function local_to_utc(tz, l)
  local o = tz_offset(tz, l - tz_offset(tz, l))
  local u = l - o
  local o2 = tz_offset(tz, u)
  if o2 ~= o then u = l - o2 end
  return u
end

local function next_local_midnight(tz, t)
  local day = local_day_minute(tz, t)
  local u = local_to_utc(tz, (day + 1) * 86400)
  if u <= t then u = t + 3600 end
  return u
end

-- Schedule windows: "weekday,startMinute,endMinute;..." with Monday = 0.
local function wins_parse(s)
  local w = {}
  for d, a, b in string.gmatch(s or "", "(%d+),(%d+),(%d+)") do
    w[#w + 1] = { d = tonumber(d), s = tonumber(a), e = tonumber(b) }
  end
  return w
end

local function in_window(wins, tz, t)
  local day, minute = local_day_minute(tz, t)
  local wd = (day + 3) % 7 -- 1970-01-01 was a Thursday
  for i = 1, #wins do
    local w = wins[i]
    if w.d == wd and minute >= w.s and minute < w.e then return true end
  end
  return false
end

-- Earliest UTC second after t inside a window (looks 8 days ahead); nil if none.
local function next_window_start(wins, tz, t)
  local day = local_day_minute(tz, t)
  local best = nil
  for d = day - 1, day + 8 do
    local wd = (d + 3) % 7
    for i = 1, #wins do
      local w = wins[i]
      if w.d == wd then
        local u = local_to_utc(tz, d * 86400 + w.s * 60)
        if not in_window(wins, tz, u) then
          -- the window opens inside a DST gap: it opens when the clock jumps forward
          local change = tz_next_change(tz, u)
          if change and in_window(wins, tz, change) then u = change else u = nil end
        end
        if u and u > t and (best == nil or u < best) then best = u end
      end
    end
  end
  return best
end

-- GCRA over integers. State: anchor a (us) and count n; the theoretical arrival time of the
-- next item is TAT = a + n*per/lim (per = period in us, lim = limit), tolerance tau = burst*per/lim.
-- The k-th item from now (k = 1, 2, ...) may go iff (n + k - 1 - burst) * per <= (now - a) * lim.
-- Keeping n < lim and moving a by whole periods keeps every product exact (no drift).
local function gcra_load(st, lim, per, now)
  local a, n = tonumber(st.a), tonumber(st.n)
  if a == nil or n == nil then return now, 0 end
  local slim, sper = tonumber(st.lim), tonumber(st.per)
  if slim ~= lim or sper ~= per then
    -- the rate changed: keep the theoretical arrival time, so there is no catch-up burst
    a = math.ceil(a + n * sper / slim)
    n = 0
  end
  if a + n * per / lim < now then
    -- idle: the bucket refilled, but never beyond burst
    a = now
    n = 0
  end
  return a, n
end

local function gcra_allowed(a, n, lim, per, burst, now)
  local k = math.floor((now - a) * lim / per) + burst - n + 1
  if k < 0 then k = 0 end
  return k
end

local function gcra_normalize(a, n, lim, per)
  local q = math.floor(n / lim)
  return a + q * per, n - q * lim
end

-- Give back `r` releases to a queue's daily count: releases HubSpot did not take, so the day's
-- cap counts each execution once, for the release that went through. Not to the rate: a token
-- given back to a bucket is spent later, and the releases that go through could then exceed
-- the policy's limit in one period (a whole error spell's retries at once). The count never
-- goes below zero; a count from an earlier day is reset by the next take.
local function refund_daily(state, r)
  local ccnt = tonumber(redis.call("HGET", state, "ccnt") or "0")
  if ccnt > 0 then
    redis.call("HSET", state, "ccnt", fmt(math.max(0, ccnt - r)))
  end
end

-- earliest instant (us) the next item may go
local function gcra_next(a, n, lim, per, burst)
  return math.ceil(a + (n - burst) * per / lim)
end
