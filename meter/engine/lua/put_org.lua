-- Create or replace an organization's config. ARGV[8] "0": replace only, when the config hash
-- exists (an org whose state is there, or being rebuilt): an org whose shard lost its state
-- stays absent, to be rebuilt, instead of coming back as a config without its buckets.
-- Returns 1 when written, 0 when not.
local org_key = KEYS[1]
local status = ARGV[1]
local period_kind = ARGV[2]
local anchor_ms = ARGV[3]
local rolling_days = ARGV[4]
local limit_policy = ARGV[5]
local default_member_limit = ARGV[6] -- "" = unlimited
local grace_ms = ARGV[7]
if ARGV[8] == '0' and redis.call('EXISTS', org_key) == 0 then return 0 end

redis.call('HSET', org_key, 'c', table.concat({status, period_kind, anchor_ms, rolling_days,
  limit_policy, default_member_limit, grace_ms}, SEP))
redis.call('HDEL', org_key, 'ps', 'pe')
return 1
