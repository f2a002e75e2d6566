-- Forget stored settlement results the settlement store now holds.
local org_key = KEYS[1]
local keys = ARGV

local P = string.sub(org_key, 1, -2)
local removed = 0
for first = 1, #keys, 1000 do
  removed = removed + redis.call('HDEL', P .. 'r', unpack(keys, first, math.min(first + 999, #keys)))
end
return removed
