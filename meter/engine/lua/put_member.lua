-- Create or replace a member's config (its buckets are kept).
local org_key = KEYS[1]
local member_id = ARGV[1]
local seated = ARGV[2] -- "1" or "0"
local member_limit = ARGV[3] -- "" = the org's default
local billing_group = ARGV[4] -- "" = Unassigned

local P = string.sub(org_key, 1, -2)
local v = redis.call('HGET', P .. 'm', member_id) or '\29'
local buckets = string.sub(v, (string.find(v, '[\30\29]')))
redis.call('HSET', P .. 'm', member_id,
  seated .. SEP .. member_limit .. SEP .. billing_group .. SEP .. buckets)
return 1
