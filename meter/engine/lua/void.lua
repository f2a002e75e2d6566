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
local owners = {} -- owner -> {bucket id -> expires_at}
local function expiry(owner, id)
  local exps = owners[owner]
  if not exps then
    local v
    if owner == '' then
      v = redis.call('GET', P .. 'sh')
    else
      v = redis.call('HGET', P .. 'm', owner)
    end
    exps = {}
    for _, b in ipairs(decode_buckets(v or '', owner)) do exps[b.id] = b.exp end
    owners[owner] = exps
  end
  return exps[id]
end
for j = 10, #s - 2, 3 do
  local id, kind, amount = s[j], s[j + 1], tonumber(s[j + 2])
  drawn = drawn + amount
  if kind == 'h' then drawn_shared = drawn_shared + amount end
  local owner = kind == 'h' and '' or mid
  local exp = expiry(owner, id)
  if exp and now < exp then
    redis.call('HINCRBY', P .. 'l', owner .. SEP .. id, s[j + 2])
    returned[#returned + 1] = id
    returned[#returned + 1] = kind
    returned[#returned + 1] = s[j + 2]
  end
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
