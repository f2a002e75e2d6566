-- Would `credits` be allowed for the member now, counting live holds? (README "Checks")
-- Returns {reason} for an early refusal, else
-- {reason or "", seat, personal, shared, on_demand, member_room, group_room, period_end}.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local member_id = ARGV[2]
local credits = tonumber(ARGV[3])

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if org then clean_holds(P, org, now) end
return check_reply(check_core(P, org, member_id, credits, now))
