-- Mark a member removed: checks answer unknown_member, events in flight still settle.
local org_key = KEYS[1]
local member_id = ARGV[1]

local P = string.sub(org_key, 1, -2)
local v = redis.call('HGET', P .. 'm', member_id)
if not v then return 0 end
local config, rest = string.match(v, '^([01]\31[^\31]*\31[^\31]*\31)[^\30\29]*(.*)$')
if not config then return 0 end
redis.call('HSET', P .. 'm', member_id, config .. '1' .. rest)
return 1
