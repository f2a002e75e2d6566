-- Drop buckets no event can draw from any more (README "Pruning"): expired at now, and the
-- period containing their last valid instant closed (end + grace) more than PRUNE_AFTER_MS ago.
-- Returns the number of buckets dropped.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return 0 end

local dropped = 0
-- The owner's config and buckets without its prunable buckets (nil when nothing goes).
local function prune(v)
  local cfg, buckets = decode_owner(v)
  local kept, nk = {}, 0
  for i = 1, #buckets do
    local b = buckets[i]
    local drop = false
    if b.exp <= now then
      local _, pe = period_at(org, b.exp - 1)
      drop = now > pe + org.grace + PRUNE_AFTER_MS
    end
    if not drop then
      nk = nk + 1
      kept[nk] = b
    end
  end
  if nk == #buckets then return nil end
  dropped = dropped + #buckets - nk
  return cfg, kept
end

local flat = redis.call('HGETALL', P .. 'm')
for i = 1, #flat, 2 do
  local cfg, kept = prune(flat[i + 1])
  if kept then store_owner(P, flat[i], cfg, kept) end
end
local sh = redis.call('GET', P .. 'sh')
if sh then
  local _, kept = prune(sh)
  if kept then store_owner(P, '', nil, kept) end
end
return dropped
