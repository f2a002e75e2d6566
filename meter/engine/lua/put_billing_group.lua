-- Create a billing group or change its period limit.
local org_key = KEYS[1]
local group_id = ARGV[1]
local limit = ARGV[2] -- "" = unlimited

local P = string.sub(org_key, 1, -2)
redis.call('HSET', P .. 'g', group_id, limit)
return 1
