-- Credits left per bucket, all buckets of the organization: {bucket, left, ...}.
local org_key = KEYS[1]

local P = string.sub(org_key, 1, -2)
local flat = redis.call('HGETALL', P .. 'l')
for i = 1, #flat, 2 do flat[i] = string.match(flat[i], '\31(.*)$') end
return flat
