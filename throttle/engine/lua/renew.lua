-- renew.lua: extend the leases of released executions a dispatcher still holds, so that neither
-- a completion call HubSpot answers slowly nor a wait for the portal's budget lets them return
-- to their queue while a completion may be on its way (another dispatcher would send it again).
-- Only leases that have not run out are extended, and a deadline is never moved earlier; a
-- holder whose execution was taken again since (a newer attempt) extends nothing.
--
-- KEYS[1]  leases  zset  the shard's leases ("ref|callbackId" -> deadline ms)
-- ARGV[1]  now_offset_ms  added to Redis TIME; tests only, production passes 0
-- ARGV[2]  prefix         the shard key prefix "throttle:{tN}:"
-- ARGV[3]  lease_ms       the new deadline is now + lease_ms (a later one is kept)
-- ARGV[4..] triples: ref, callbackId, attempt (the holder's fencing token, from take)
-- Returns one flag per triple, in order: 1 still leased (until now + lease_ms at least), 0 not
-- (its lease ran out, it was settled, or taken again): the dispatcher must not send it

local leases_key = KEYS[1]
local now_offset_ms = ARGV[1]
local prefix = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local first_triple = 4

local now_ms = math.floor(clock_us(now_offset_ms) / 1000)
local deadline = now_ms + lease_ms

local held = {}
for i = first_triple, #ARGV, 3 do
  local ref, cb = ARGV[i], ARGV[i + 1]
  local member = lease_member(ref, cb)
  local score = tonumber(redis.call("ZSCORE", leases_key, member))
  if score and score > now_ms and holds(policy_keys(prefix, (split_ref(ref))), cb, ARGV[i + 2]) then
    if score < deadline then
      redis.call("ZADD", leases_key, fmt(deadline), member)
    end
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
