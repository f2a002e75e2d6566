-- Check, and if allowed hold the simulated draw until now + ttl (README "reservations").
-- Returns the check reply followed by reservation id and expiry when held; an id already held
-- returns {"held", expiry} unchanged.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local member_id = ARGV[2]
local credits = tonumber(ARGV[3])
local reservation_id = ARGV[4]
local ttl = tonumber(ARGV[5]) -- already capped by the caller

local P = string.sub(org_key, 1, -2)
local org = load_org(P)
if org then
  clean_holds(P, org, now)
  if org.hm then
    local existing = redis.call('ZSCORE', P .. 'hx', reservation_id)
    if existing then return {'held', existing} end
  end
end

local c = check_core(P, org, member_id, credits, now)
local reply = check_reply(c)
if c.reason or not c.drawn then return reply end

local expires = now + ttl
local lines = c.lines
local drawn, drawn_shared = 0, 0
local parts = {member_id, fmt(expires), c.group, '', ''}
-- The new held sums, from those check_core read: one HSET.
local held, at = c.held, {}
for i = 1, #c.list do at[c.list[i]] = i + 3 end
local sums = {}
local function add(field, k, amount)
  sums[field] = (sums[field] or num(held[k])) + amount
end
for j = 1, c.nl - 1, 2 do
  local b, amount = lines[j], lines[j + 1]
  drawn = drawn + amount
  if b.rank == 2 then drawn_shared = drawn_shared + amount end
  parts[#parts + 1] = b.id
  parts[#parts + 1] = fmt(amount)
  add('b' .. b.id, at[b], amount)
end
parts[4] = fmt(drawn)
parts[5] = fmt(drawn_shared)
if drawn > 0 then
  add('a' .. member_id, 1, drawn)
  add('g' .. c.group, 3, drawn)
end
if drawn_shared > 0 then add('s' .. member_id, 2, drawn_shared) end
local args, n = {}, 0
for field, value in pairs(sums) do
  args[n + 1] = field
  args[n + 2] = fmt(value)
  n = n + 2
end
if n > 0 then redis.call('HSET', P .. 'ha', '_', COUNTER_PAD, unpack(args)) end
redis.call('HSET', P .. 'h', reservation_id, table.concat(parts, SEP), '\31', COUNTER_PAD)
redis.call('ZADD', P .. 'hx', fmt(expires), reservation_id)
if not org.hm or expires < org.hm then redis.call('HSET', org.key, 'hm', fmt(expires)) end
reply[#reply + 1] = reservation_id
reply[#reply + 1] = fmt(expires)
return reply
