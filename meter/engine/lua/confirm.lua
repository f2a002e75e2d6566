-- Forget stored settlement results the settlement store now holds.
-- ARGV[1]: the keys packed in one string, each ended by \30 (one argument instead of one per key:
-- a client packs a single string some thirty times faster than thousands of arguments).
local org_key = KEYS[1]
local packed = ARGV[1]

local P = string.sub(org_key, 1, -2)
local keys, n = {}, 0
do -- plain searches: see settle_batch.lua
  local find, sub = string.find, string.sub
  local i, last = 1, #packed
  while i <= last do
    local e = find(packed, '\30', i, true)
    n = n + 1
    keys[n] = sub(packed, i, e - 1)
    i = e + 1
  end
end
local removed = 0
for first = 1, n, 1000 do
  removed = removed + redis.call('HDEL', P .. 'r', unpack(keys, first, math.min(first + 999, n)))
end
return removed
