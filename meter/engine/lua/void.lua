-- Undo a settlement (README "Voids"): credits back to its unexpired buckets, counters of its
-- period taken back while the period is open. The settlement is the stored result, or, once
-- confirmed, the one the caller passes (same encoding as settle_batch results).
-- Returns {"none"}, or {"new" | "dup", bucket, kind, amount, ...} (the lines returned).
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local key = ARGV[2]
local given = ARGV[3] -- "" when the caller has no settlement

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if org then clean_holds(P, org, now) end
local done = redis.call('HGET', P .. 'v', key)
if done then
  local reply = split(done)
  reply[1] = 'dup'
  return reply
end
local enc = redis.call('HGET', P .. 'r', key)
if not enc and given ~= '' then enc = given end
if not org or not enc then return {'none'} end

local s = split(enc)
local mid, ps, pe, group, unfunded = s[1], s[4], tonumber(s[5]), s[6], tonumber(s[7])
local returned = {'new'}
local drawn, drawn_shared = 0, 0
local owners = {} -- owner id ("" = shared pool) -> its config, buckets, and an index by id
local function bucket(owner_id, id)
  local o = owners[owner_id]
  if not o then
    local cfg, buckets = load_owner(P, owner_id)
    o = {cfg = cfg, buckets = buckets, by_id = {}}
    for _, b in ipairs(buckets) do
      o.by_id[b.id] = b
      b.owner = o
    end
    owners[owner_id] = o
  end
  return o.by_id[id]
end
for j = 10, #s - 2, 3 do
  local id, kind, amount = s[j], s[j + 1], tonumber(s[j + 2])
  drawn = drawn + amount
  if kind == 'h' then drawn_shared = drawn_shared + amount end
  local b = bucket(kind == 'h' and '' or mid, id)
  if b and now < b.exp then
    -- Capped at MAX_AMOUNT, as the model caps it: a sum past 2^53 would not be exact here.
    local left = b.left + amount
    if left > MAX_AMOUNT then left = MAX_AMOUNT end
    b.left = left
    b.owner.dirty = true
    returned[#returned + 1] = id
    returned[#returned + 1] = kind
    returned[#returned + 1] = s[j + 2]
  end
end
for owner_id, o in pairs(owners) do
  if o.dirty then store_owner(P, owner_id, o.cfg, o.buckets) end
end
if now <= pe + org.grace then
  local ckey = P .. 'c:' .. ps
  if drawn > 0 then
    redis.call('HINCRBY', ckey, 'a' .. mid, fmt(-drawn))
    redis.call('HINCRBY', ckey, 'g' .. group, fmt(-drawn))
    redis.call('HINCRBY', ckey, 'd', fmt(-drawn))
  end
  if drawn_shared > 0 then redis.call('HINCRBY', ckey, 's' .. mid, fmt(-drawn_shared)) end
  if unfunded > 0 then redis.call('HINCRBY', ckey, 'u', fmt(-unfunded)) end
end
redis.call('HSET', P .. 'v', key, table.concat(returned, SEP))
return returned
