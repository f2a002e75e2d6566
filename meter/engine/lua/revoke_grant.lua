-- Revoke a bucket of an owner (a member, or the shared pool when member is ""): nothing left in
-- it, and it expires at now unless it expires sooner, moved to its place in burn-down order for
-- that expiry. Idempotent. Returns the credits it had left, or nil when the owner has no such
-- bucket.
local org_key = KEYS[1]
local member_id = ARGV[1]
local bucket_id = ARGV[2]
local now = tonumber(ARGV[3])

local P = string.sub(org_key, 1, -2)
local v
if member_id == '' then
  v = redis.call('GET', P .. 'sh')
else
  v = redis.call('HGET', P .. 'm', member_id)
end
if not v then return nil end

local p = string.find(v, '\29', 1, true)
local head = string.sub(v, 1, p - 1)
local lefts = {}
for left in string.gmatch(string.sub(v, p + 1), '[^\31]+') do lefts[#lefts + 1] = left end
local buckets, n, found = {}, 0, nil
for k, from, e, g, id in string.gmatch(head, '\30(%a)([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\30]*)') do
  n = n + 1
  buckets[n] = {kind = k, rank = RANK_OF[k], from = from, exp = e, g = g, id = id,
                left = lefts[n]}
  if id == bucket_id then found = n end
end
if not found then return nil end

local b = table.remove(buckets, found)
local was = b.left
b.left = '0'
if tonumber(b.exp) > now then b.exp = fmt(now) end
-- its new place: before the first bucket it precedes in burn-down order
local exp, gr = tonumber(b.exp), tonumber(b.g)
local at = #buckets + 1
for i = 1, #buckets do
  local o = buckets[i]
  local before
  if b.rank ~= o.rank then
    before = b.rank < o.rank
  elseif exp ~= tonumber(o.exp) then
    before = exp < tonumber(o.exp)
  elseif gr ~= tonumber(o.g) then
    before = gr < tonumber(o.g)
  else
    before = id_less(b.id, o.id)
  end
  if before then
    at = i
    break
  end
end
table.insert(buckets, at, b)

local config = head
local first = string.find(head, '\30', 1, true)
if first then config = string.sub(head, 1, first - 1) end
local parts, out_lefts = {}, {}
for i = 1, #buckets do
  local o = buckets[i]
  parts[i] = '\30' .. o.kind .. o.from .. SEP .. o.exp .. SEP .. o.g .. SEP .. o.id
  out_lefts[i] = o.left
end
v = config .. table.concat(parts) .. '\29' .. table.concat(out_lefts, SEP)
if member_id == '' then
  redis.call('SET', P .. 'sh', v)
else
  redis.call('HSET', P .. 'm', member_id, v)
end
return was
