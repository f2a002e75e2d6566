-- Create or replace a member's config (its buckets are kept).
local org_key = KEYS[1]
local member_id = ARGV[1]
local seated = ARGV[2] -- "1" or "0"
local member_limit = ARGV[3] -- "" = the org's default
local billing_group = ARGV[4] -- "" = Unassigned

local P = string.sub(org_key, 1, -2)
local key = P .. 'u:' .. member_id
redis.call('HSET', key, 's', seated, 'l', member_limit, 'g', billing_group)
redis.call('HDEL', key, 'x')
redis.call('SADD', P .. 'ms', member_id)
return 1
