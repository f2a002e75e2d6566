-- Delete a billing group: members naming it count as Unassigned from now on.
local org_key = KEYS[1]
local group_id = ARGV[1]

local P = string.sub(org_key, 1, -2)
return redis.call('HDEL', P .. 'g', group_id)
