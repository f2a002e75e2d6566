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

-- The field in l of each bucket id; false when more than one owner has it.
local field = {}
local fields = redis.call('HKEYS', P .. 'l')
for i = 1, #fields do
  local f = fields[i]
  local id = string.match(f, '\31(.*)$')
  if field[id] == nil then field[id] = f else field[id] = false end
end

for i = 3, 2 + 2 * n, 2 do
  local where = field[ARGV[i]]
  if where == nil then return {'unknown_bucket', ARGV[i]} end
  if where == false then return {'ambiguous_bucket', ARGV[i]} end
end
for i = 3, 2 + 2 * n, 2 do
  redis.call('HSET', P .. 'l', field[ARGV[i]], ARGV[i + 1])
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
