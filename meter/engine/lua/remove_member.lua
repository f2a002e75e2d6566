-- Mark a member removed: checks answer unknown_member, events in flight still settle.
local org_key = KEYS[1]
local member_id = ARGV[1]

local P = string.sub(org_key, 1, -2)
local key = P .. 'u:' .. member_id
if redis.call('HEXISTS', key, 's') == 0 then return 0 end
redis.call('HSET', key, 'x', '1')
return 1
