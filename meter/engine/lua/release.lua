-- Drop a live hold. Returns 1 when one was released, 0 otherwise.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local reservation_id = ARGV[2]

local P = string.sub(org_key, 1, -2)
clean_holds(P, now)
local hold = redis.call('HGET', P .. 'h', reservation_id)
if not hold then return 0 end
drop_hold(P, reservation_id, hold)
return 1
