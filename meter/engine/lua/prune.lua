-- Drop buckets no event can draw from any more (README "Pruning"): expired at now, and the
-- period containing their last valid instant closed (end + grace) more than PRUNE_AFTER_MS ago.
-- Returns the number of buckets dropped.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return 0 end

local dropped = 0
-- The owner's value without its prunable buckets (nil when nothing goes).
local function prune(v)
  local p = string.find(v, '\29', 1, true)
  local head = string.sub(v, 1, p - 1)
  local first = string.find(head, '\30', 1, true)
  if not first then return nil end
  local lefts, i = {}, 0
  for left in string.gmatch(string.sub(v, p + 1), '[^\31]+') do
    i = i + 1
    lefts[i] = left
  end
  local kept, kept_lefts, nk = {}, {}, 0
  i = 0
  for enc, exp in string.gmatch(head, '(\30%a[^\31]*\31([^\31]*)\31[^\30]*)') do
    i = i + 1
    exp = tonumber(exp)
    local drop = false
    if exp <= now then
      local _, pe = period_at(org, exp - 1)
      drop = now > pe + org.grace + PRUNE_AFTER_MS
    end
    if not drop then
      nk = nk + 1
      kept[nk], kept_lefts[nk] = enc, lefts[i]
    end
  end
  if nk == i then return nil end
  dropped = dropped + i - nk
  return string.sub(head, 1, first - 1) .. table.concat(kept) .. '\29'
    .. table.concat(kept_lefts, SEP)
end

local flat = redis.call('HGETALL', P .. 'm')
for i = 1, #flat, 2 do
  local v = prune(flat[i + 1])
  if v then redis.call('HSET', P .. 'm', flat[i], v) end
end
local sh = redis.call('GET', P .. 'sh')
if sh then
  local v = prune(sh)
  if v then redis.call('SET', P .. 'sh', v) end
end
return dropped
