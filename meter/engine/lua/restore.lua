-- Put back buckets' credits left and the counters of the period containing now, after config
-- and grants were put again on an empty Redis (README "Recovery"); drop holds and stored results.
-- ARGV: now, n, then n pairs (bucket id, left), then pairs (counter field, value) of lib.lua's
-- c:<start> encoding. Returns {} when done, or {problem, detail} with nothing changed
-- (problem: unknown_org, unknown_bucket, ambiguous_bucket).
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return {'unknown_org', ''} end

-- Where each bucket id lives; false when more than one owner has it.
local owner = {}
local function index(key)
  local fields = redis.call('HKEYS', key)
  for i = 1, #fields do
    local f = fields[i]
    if #f > 1 and string.byte(f, 1) == 98 then -- 'b'
      local id = string.sub(f, 2)
      if owner[id] == nil then owner[id] = key else owner[id] = false end
    end
  end
end
local members = redis.call('SMEMBERS', P .. 'ms')
for i = 1, #members do index(P .. 'u:' .. members[i]) end
index(P .. 'sh')

for i = 3, 2 + 2 * n, 2 do
  local where = owner[ARGV[i]]
  if where == nil then return {'unknown_bucket', ARGV[i]} end
  if where == false then return {'ambiguous_bucket', ARGV[i]} end
end
for i = 3, 2 + 2 * n, 2 do
  local key, field = owner[ARGV[i]], 'b' .. ARGV[i]
  local b = parse_bucket(ARGV[i], redis.call('HGET', key, field))
  redis.call('HSET', key, field, bucket_head(b) .. ARGV[i + 1])
end

local ps, pe = period_at(org, now)
local ckey = P .. 'c:' .. fmt(ps)
redis.call('DEL', ckey, P .. 'h', P .. 'hx', P .. 'ha', P .. 'r')
redis.call('HDEL', org.key, 'hm')
if #ARGV > 2 + 2 * n then
  redis.call('HSET', ckey, unpack(ARGV, 3 + 2 * n))
  redis.call('PEXPIRE', ckey, fmt(pe + org.grace + COUNTER_KEEP_MS - now))
end
return {}
