-- Mark a member removed: checks answer unknown_member, events in flight still settle.
local org_key = KEYS[1]
local member_id = ARGV[1]

local P = string.sub(org_key, 1, -2)
local cfg, buckets = load_owner(P, member_id)
if not cfg then return 0 end
cfg.removed = true
store_owner(P, member_id, cfg, buckets)
return 1
