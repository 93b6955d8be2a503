-- registry_delete.lua: remove a policy from the registry and move the revision counter, in
-- one step (see registry_put.lua: a pod must never find the entry gone and the counter
-- unmoved, or its refresh keeps the deleted policy). A delete of nothing moves nothing, so a
-- draining policy's repeated retires do not make every pod reload the registry.
--
-- KEYS[1]  registry  hash    policy key ("portal:name") -> entry
-- KEYS[2]  rev       string  the registry's revision counter (pods poll it)
-- ARGV[1]  policy_key        the entry's field ("portal:name")
-- Returns 1 if the entry was there (and is gone now), else 0.

local registry_key, rev_key = KEYS[1], KEYS[2]
local policy_key = ARGV[1]

local removed = redis.call("HDEL", registry_key, policy_key)
if removed == 1 then
  redis.call("INCR", rev_key)
end
return removed
