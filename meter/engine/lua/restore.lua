-- Put back buckets' credits left and the counters of the period containing now, after config
-- and grants were put again on an empty Redis (README "Recovery"); drop holds and stored results.
-- ARGV: now, n, then n pairs (bucket id, left), then pairs (counter field, value) of lib.lua's
-- c:<start> encoding. Returns {} when done, or {problem, detail} with nothing changed
-- (problem: unknown_org, unknown_bucket, ambiguous_bucket).
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])

local P = string.sub(org_key, 1, -2)
local org = load_org(P, true)
if not org then return {'unknown_org', ''} end

-- Each bucket id's bucket; false when more than one owner has it.
local where = {}
local owners = {}
local function index(owner_id, v)
  local cfg, buckets = decode_owner(v)
  local owner = {id = owner_id, cfg = cfg, buckets = buckets}
  owners[#owners + 1] = owner
  for i = 1, #buckets do
    local b = buckets[i]
    b.owner = owner
    if where[b.id] == nil then where[b.id] = b else where[b.id] = false end
  end
end
local flat = redis.call('HGETALL', P .. 'm')
for i = 1, #flat, 2 do index(flat[i], flat[i + 1]) end
local sh = redis.call('GET', P .. 'sh')
if sh then index('', sh) end

for i = 3, 2 + 2 * n, 2 do
  local b = where[ARGV[i]]
  if b == nil then return {'unknown_bucket', ARGV[i]} end
  if b == false then return {'ambiguous_bucket', ARGV[i]} end
end
for i = 3, 2 + 2 * n, 2 do
  local b = where[ARGV[i]]
  b.left = tonumber(ARGV[i + 1])
  b.owner.dirty = true
end
for _, o in ipairs(owners) do
  if o.dirty then store_owner(P, o.id, o.cfg, o.buckets) end
end

local ps, pe = period_at(org, now)
local ckey = P .. 'c:' .. fmt(ps)
redis.call('DEL', ckey, P .. 'h', P .. 'hx', P .. 'ha', P .. 'r')
redis.call('HDEL', org.key, 'hm')
if #ARGV > 2 + 2 * n then
  redis.call('HSET', ckey, '_', COUNTER_PAD, unpack(ARGV, 3 + 2 * n))
  redis.call('PEXPIRE', ckey, fmt(pe + org.grace + COUNTER_KEEP_MS - now))
end
return {}
