-- Revoke a bucket of an owner (a member, or the shared pool when member is ""): nothing left in
-- it, and it expires at now unless it expires sooner, moved to its place in burn-down order for
-- that expiry. Idempotent. Returns the credits it had left, or nil when the owner has no such
-- bucket.
local org_key = KEYS[1]
local member_id = ARGV[1]
local bucket_id = ARGV[2]
local now = tonumber(ARGV[3])

local P = string.sub(org_key, 1, -2)
local cfg, buckets = load_owner(P, member_id)
local found = nil
for i = 1, #buckets do
  if buckets[i].id == bucket_id then found = i end
end
if not found then return nil end

local b = table.remove(buckets, found)
local was = b.left
b.left = 0
if b.exp > now then b.exp = now end
-- its new place: before the first bucket it precedes in burn-down order
local at = #buckets + 1
for i = 1, #buckets do
  if burns_before(b, buckets[i]) then
    at = i
    break
  end
end
table.insert(buckets, at, b)
store_owner(P, member_id, cfg, buckets)
return fmt(was)
