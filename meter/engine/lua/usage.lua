-- Counters of the period containing now: {field, value, ...} (fields as in lib.lua).
local org_key = KEYS[1]
local now = tonumber(ARGV[1])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return {} end
local ps = period_at(org, now)
return redis.call('HGETALL', P .. 'c:' .. fmt(ps))
