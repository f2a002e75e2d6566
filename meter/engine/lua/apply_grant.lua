-- Add a bucket to its owner (a member, or the shared pool when member is ""), at its place in
-- burn-down order: kind, sooner expiry, older grant, bucket id (bytewise). Idempotent by bucket id
-- within the owner: returns 1 when new, 0 when it already existed.
local org_key = KEYS[1]
local member_id = ARGV[1]
local bucket_id = ARGV[2]
local kind = ARGV[3]

local P = string.sub(org_key, 1, -2)
local cfg, buckets = load_owner(P, member_id)
local new = {kind = kind, from = tonumber(ARGV[4]), exp = tonumber(ARGV[5]),
             granted = tonumber(ARGV[6]), id = bucket_id, left = tonumber(ARGV[7])}
local at = nil
for i = 1, #buckets do
  local b = buckets[i]
  if b.id == bucket_id then return 0 end
  if not at and burns_before(new, b) then at = i end
end
table.insert(buckets, at or #buckets + 1, new)
store_owner(P, member_id, cfg, buckets)
return 1
