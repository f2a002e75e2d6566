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
  v = redis.call('GET', P .. 'sh') or ''
else
  v = redis.call('HGET', P .. 'm', member_id) or ''
end

local rank, exp, gr = RANK_OF[string.byte(kind)], tonumber(expires_at), tonumber(granted_at)
-- true when the new bucket goes before the stored one
local function before(k, e, g, id)
  local r = RANK_OF[string.byte(k)]
  if rank ~= r then return rank < r end
  e = tonumber(e)
  if exp ~= e then return exp < e end
  g = tonumber(g)
  if gr ~= g then return gr < g end
  return id_less(bucket_id, id)
end

local at = nil -- byte offset of the first stored bucket the new one goes before
local first = string.find(v, '\30', 1, true)
if first then
  local pos = first
  while pos do
    local k, e, g, id = string.match(v, '^\30(%a)[^\31]*\31([^\31]*)\31([^\31]*)\31([^\30]*)', pos)
    if id == bucket_id then return 0 end
    if not at and before(k, e, g, id) then at = pos end
    pos = string.find(v, '\30', pos + 1, true)
  end
end
local enc = '\30' .. kind .. valid_from .. SEP .. expires_at .. SEP .. granted_at .. SEP .. bucket_id
if at then
  v = string.sub(v, 1, at - 1) .. enc .. string.sub(v, at)
else
  v = v .. enc
end
if member_id == '' then
  redis.call('SET', P .. 'sh', v)
else
  redis.call('HSET', P .. 'm', member_id, v)
end
redis.call('HSET', P .. 'l', member_id .. SEP .. bucket_id, amount)
return 1
