-- Drop buckets no event can draw from any more (README "Pruning"): expired at now, and the
-- period containing their last valid instant closed (end + grace) more than PRUNE_AFTER_MS ago.
-- Returns the number of buckets dropped.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return 0 end

local dropped = 0
local function prune(key)
  local flat = redis.call('HGETALL', key)
  local gone, n = {}, 0
  for i = 1, #flat, 2 do
    local f = flat[i]
    if #f > 1 and string.byte(f, 1) == 98 then -- 'b'
      local b = parse_bucket(string.sub(f, 2), flat[i + 1])
      if b.exp <= now then
        local _, pe = period_at(org, b.exp - 1)
        if now > pe + org.grace + PRUNE_AFTER_MS then
          n = n + 1
          gone[n] = f
        end
      end
    end
  end
  for first = 1, n, 1000 do
    redis.call('HDEL', key, unpack(gone, first, math.min(first + 999, n)))
  end
  dropped = dropped + n
end
local members = redis.call('SMEMBERS', P .. 'ms')
for i = 1, #members do prune(P .. 'u:' .. members[i]) end
prune(P .. 'sh')
return dropped
