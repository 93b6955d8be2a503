-- Take one HubSpot API call from a portal's budget: a sliding log over a rolling window, shared by
-- every dispatcher pod. Time comes from Redis (TIME), so pods with skewed clocks agree.
--
-- KEYS[1]  zset   the portal's calls in the window: member = call id, score = time (ms)
-- KEYS[2]  string the portal's hold after a 429 (its TTL is the time left to wait)
-- ARGV[1]  window length (ms)
-- ARGV[2]  calls allowed per window
-- ARGV[3]  unique id of this call
-- Returns  {1, 0}          the call may go now (and is counted)
--          {0, wait_ms}    not now: wait this long (a hold, or until the oldest call leaves)
local log_key, hold_key = KEYS[1], KEYS[2]
local window_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local call_id = ARGV[3]

local hold_ms = redis.call('PTTL', hold_key)
if hold_ms > 0 then
  return {0, hold_ms}
end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', log_key, '-inf', now_ms - window_ms)
if redis.call('ZCARD', log_key) < limit then
  redis.call('ZADD', log_key, now_ms, call_id)
  redis.call('PEXPIRE', log_key, window_ms)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', log_key, 0, 0, 'WITHSCORES')
local wait_ms = tonumber(oldest[2]) + window_ms - now_ms + 1
if wait_ms < 1 then
  wait_ms = 1
end
return {0, wait_ms}
