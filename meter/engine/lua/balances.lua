-- Credits left per bucket, all buckets of the organization: {bucket, left, ...}.
local org_key = KEYS[1]

local P = string.sub(org_key, 1, -2)
local out, n = {}, 0
local function collect(v)
  local _, buckets = decode_owner(v)
  for i = 1, #buckets do
    out[n + 1] = buckets[i].id
    out[n + 2] = fmt(buckets[i].left)
    n = n + 2
  end
end
local flat = redis.call('HGETALL', P .. 'm')
for i = 2, #flat, 2 do collect(flat[i]) end
local sh = redis.call('GET', P .. 'sh')
if sh then collect(sh) end
return out
