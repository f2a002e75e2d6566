-- Credits left per bucket, all buckets of the organization: {bucket, left, ...}.
local org_key = KEYS[1]

local P = string.sub(org_key, 1, -2)
local out = {}
local function collect(key)
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    if #flat[i] > 1 then
      local f = split(flat[i + 1])
      out[#out + 1] = string.sub(flat[i], 2)
      out[#out + 1] = f[5]
    end
  end
end
local members = redis.call('SMEMBERS', P .. 'ms')
for i = 1, #members do collect(P .. 'u:' .. members[i]) end
collect(P .. 'sh')
return out
