-- Create or replace an organization's config.
local org_key = KEYS[1]
local status = ARGV[1]
local period_kind = ARGV[2]
local anchor_ms = ARGV[3]
local rolling_days = ARGV[4]
local limit_policy = ARGV[5]
local default_member_limit = ARGV[6] -- "" = unlimited
local grace_ms = ARGV[7]

redis.call('HSET', org_key, 'st', status, 'pk', period_kind, 'an', anchor_ms, 'rd', rolling_days,
  'lp', limit_policy, 'dl', default_member_limit, 'gr', grace_ms)
redis.call('HDEL', org_key, 'ps', 'pe')
return 1
