-- Add a bucket to its owner (a member, or the shared pool when member is ""), at its place in
-- burn-down order: kind, sooner expiry, older grant, bucket id (bytewise). Idempotent by bucket id
-- within the owner: returns 1 when new, 0 when it already existed.
local org_key = KEYS[1]
local member_id = ARGV[1]
local bucket_id = ARGV[2]
local kind = ARGV[3]
local valid_from = ARGV[4]
local expires_at = ARGV[5]
local granted_at = ARGV[6]
local amount = ARGV[7]

local P = string.sub(org_key, 1, -2)
local v
if member_id == '' then
  v = redis.call('GET', P .. 'sh') or '\29'
else
  v = redis.call('HGET', P .. 'm', member_id) or '\29'
end

local rank, exp, gr = RANK_OF[kind], tonumber(expires_at), tonumber(granted_at)
-- true when the new bucket goes before the stored one
local function before(k, e, g, id)
  local r = RANK_OF[k]
  if rank ~= r then return rank < r end
  e = tonumber(e)
  if exp ~= e then return exp < e end
  g = tonumber(g)
  if gr ~= g then return gr < g end
  return id_less(bucket_id, id)
end

local p = string.find(v, '\29', 1, true)
local head = string.sub(v, 1, p - 1)
local lefts = {}
for left in string.gmatch(string.sub(v, p + 1), '[^\31]+') do lefts[#lefts + 1] = left end
local parts, n, at = {}, 0, nil
for enc, k, e, g, id in string.gmatch(head, '(\30(%a)[^\31]*\31([^\31]*)\31([^\31]*)\31([^\30]*))') do
  if id == bucket_id then return 0 end
  n = n + 1
  parts[n] = enc
  if not at and before(k, e, g, id) then at = n end
end
local config = head
local first = string.find(head, '\30', 1, true)
if first then config = string.sub(head, 1, first - 1) end
at = at or n + 1
table.insert(parts, at, '\30' .. kind .. valid_from .. SEP .. expires_at .. SEP .. granted_at .. SEP
  .. bucket_id)
table.insert(lefts, at, amount)
v = config .. table.concat(parts) .. '\29' .. table.concat(lefts, SEP)
if member_id == '' then
  redis.call('SET', P .. 'sh', v)
else
  redis.call('HSET', P .. 'm', member_id, v)
end
return 1
