-- Create or replace a member's config (its buckets are kept).
local org_key = KEYS[1]
local member_id = ARGV[1]
local seated = ARGV[2] -- "1" or "0"
local member_limit = ARGV[3] -- "" = the org's default
local billing_group = ARGV[4] -- "" = Unassigned

local P = string.sub(org_key, 1, -2)
local _, buckets = load_owner(P, member_id)
store_owner(P, member_id, {seated = seated == '1', limit = tonumber(member_limit),
                           group = billing_group, removed = false}, buckets)
return 1
