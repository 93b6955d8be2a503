-- hubspot_budget_hold.lua: hold a portal's HubSpot calls after a 429: no call until the window
-- has rolled. A hold only ever grows, so a late, shorter 429 answer cannot shorten a longer hold
-- another pod set.
--
-- KEYS[1]  hold  string  the portal's hold (value unused; the TTL is the hold)
-- ARGV[1]  hold_ms       hold length
-- Returns  the hold now in force (ms)

local hold_key = KEYS[1]
local hold_ms = tonumber(ARGV[1])

local current = redis.call('PTTL', hold_key)
if current >= hold_ms then
  return current
end
redis.call('SET', hold_key, '1', 'PX', hold_ms)
return hold_ms
