-- Counters of the period containing now: {field, value, ...} (fields as in lib.lua, but _).
local org_key = KEYS[1]
local now = tonumber(ARGV[1])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return {} end
local ps = period_at(org, now)
local flat = redis.call('HGETALL', P .. 'c:' .. fmt(ps))
local out, n = {}, 0
for i = 1, #flat, 2 do
  if flat[i] ~= '_' then
    out[n + 1], out[n + 2] = flat[i], flat[i + 1]
    n = n + 2
  end
end
return out
