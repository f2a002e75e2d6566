-- Drop buckets no event can draw from any more (README "Pruning"): expired at now, and the
-- period containing their last valid instant closed (end + grace) more than PRUNE_AFTER_MS ago.
-- Returns the number of buckets dropped.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return 0 end

local dropped = 0
local gone, n = {}, 0
-- The owner's value without its prunable buckets (nil when nothing goes).
local function prune(v, owner)
  local kept, nk, changed = {}, 0, false
  local first = string.find(v, '\30', 1, true)
  if not first then return nil end
  local head = string.sub(v, 1, first - 1)
  for enc in string.gmatch(v, '\30[^\30]*') do
    local exp, id = string.match(enc, '^\30%a[^\31]*\31([^\31]*)\31[^\31]*\31(.*)$')
    exp = tonumber(exp)
    local drop = false
    if exp <= now then
      local _, pe = period_at(org, exp - 1)
      drop = now > pe + org.grace + PRUNE_AFTER_MS
    end
    if drop then
      changed = true
      n = n + 1
      gone[n] = owner .. SEP .. id
    else
      nk = nk + 1
      kept[nk] = enc
    end
  end
  if not changed then return nil end
  return head .. table.concat(kept)
end

local flat = redis.call('HGETALL', P .. 'm')
for i = 1, #flat, 2 do
  local v = prune(flat[i + 1], flat[i])
  if v then redis.call('HSET', P .. 'm', flat[i], v) end
end
local sh = redis.call('GET', P .. 'sh')
if sh then
  local v = prune(sh, '')
  if v then redis.call('SET', P .. 'sh', v) end
end
for first = 1, n, 1000 do
  redis.call('HDEL', P .. 'l', unpack(gone, first, math.min(first + 999, n)))
end
dropped = n
return dropped
