-- hubspot_budget_take.lua: take one HubSpot API call from a portal's budget, shared by every
-- dispatcher pod: a sliding log over a rolling window, a hold after a 429, and a cap on calls in
-- flight at once (so a 429 storm costs one 429 per window, not one per pod). Time comes from
-- Redis (TIME), so pods agree.
--
-- KEYS[1]  log       zset    the portal's calls in the window: call id -> time (ms)
-- KEYS[2]  hold      string  the portal's hold after a 429 (its TTL is the time left to wait)
-- KEYS[3]  inflight  zset    the portal's calls in flight: call id -> lease end (ms)
-- ARGV[1]  window_ms      window length
-- ARGV[2]  limit          calls allowed per window
-- ARGV[3]  call_id        unique id of this call
-- ARGV[4]  max_in_flight  calls allowed in flight at once
-- ARGV[5]  lease_ms       lease of an in-flight call: a pod that dies mid-call frees its slot then
-- ARGV[6]  poll_ms        how long to wait for an in-flight slot before asking again
-- Returns  {1, 0}          the call may go now (counted, and in flight until released)
--          {0, wait_ms}    not now: wait this long (a hold, a busy slot, or the window)

local log_key, hold_key, flight_key = KEYS[1], KEYS[2], KEYS[3]
local window_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local call_id = ARGV[3]
local max_in_flight = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
local poll_ms = tonumber(ARGV[6])

local hold_ms = redis.call('PTTL', hold_key)
if hold_ms > 0 then
  return {0, hold_ms}
end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

redis.call('ZREMRANGEBYSCORE', flight_key, '-inf', now_ms)
if redis.call('ZCARD', flight_key) >= max_in_flight then
  return {0, poll_ms}
end

redis.call('ZREMRANGEBYSCORE', log_key, '-inf', now_ms - window_ms)
if redis.call('ZCARD', log_key) >= limit then
  local oldest = redis.call('ZRANGE', log_key, 0, 0, 'WITHSCORES')
  local wait_ms = tonumber(oldest[2]) + window_ms - now_ms + 1
  if wait_ms < 1 then
    wait_ms = 1
  end
  return {0, wait_ms}
end

redis.call('ZADD', log_key, now_ms, call_id)
redis.call('PEXPIRE', log_key, window_ms)
redis.call('ZADD', flight_key, now_ms + lease_ms, call_id)
redis.call('PEXPIRE', flight_key, lease_ms)
return {1, 0}
