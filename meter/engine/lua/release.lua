-- Drop a live hold. Returns 1 when one was released, 0 otherwise.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local reservation_id = ARGV[2]

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if not org then return 0 end
clean_holds(P, org, now)
if not org.hm then return 0 end
local hold = redis.call('HGET', P .. 'h', reservation_id)
if not hold then return 0 end
drop_hold(P, reservation_id, hold)
return 1
