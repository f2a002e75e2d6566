-- Add a bucket to its owner (a member, or the shared pool when member is ""). Idempotent by
-- bucket id within the owner: returns 1 when new, 0 when it already existed.
local org_key = KEYS[1]
local member_id = ARGV[1]
local bucket_id = ARGV[2]
local kind = ARGV[3]
local valid_from = ARGV[4]
local expires_at = ARGV[5]
local granted_at = ARGV[6]
local amount = ARGV[7]

local P = string.sub(org_key, 1, -2)
local owner = P .. 'sh'
if member_id ~= '' then owner = P .. 'u:' .. member_id end
local enc = table.concat({kind, valid_from, expires_at, granted_at, amount}, SEP)
if redis.call('HSETNX', owner, 'b' .. bucket_id, enc) == 0 then return 0 end
if member_id ~= '' then redis.call('SADD', P .. 'ms', member_id) end
return 1
