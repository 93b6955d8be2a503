-- registry_put.lua: store a policy in the registry under a new revision, in one step.
-- The entry and the revision counter change together: a pod that reads the counter and finds
-- it unchanged knows the entries are as it loaded them (`PolicyIndex.refresh`), and the config
-- API's "in force" answer, given once Redis shows the entry, can trust the pod's next refresh.
--
-- KEYS[1]  registry  hash    policy key ("portal:name") -> {"revision":N,"spec":{...}}
-- KEYS[2]  rev       string  the registry's revision counter (pods poll it)
-- ARGV[1]  policy_key        the entry's field ("portal:name")
-- ARGV[2]  spec              the policy's spec as compact JSON (the caller validated it)
-- Returns the new revision, which the entry carries.

local registry_key, rev_key = KEYS[1], KEYS[2]
local policy_key = ARGV[1]
local spec = ARGV[2]

local revision = redis.call("INCR", rev_key)
redis.call("HSET", registry_key, policy_key,
  '{"revision":' .. revision .. ',"spec":' .. spec .. '}')
return revision
