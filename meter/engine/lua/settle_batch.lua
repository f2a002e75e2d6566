-- Settle a batch of usage events of one organization, in order (README "Settling").
-- Returns one string per event: "n" .. result (new), "d" .. result (stored, duplicate) or
-- "x" .. reason. result = member|credits|time|period_start|period_end|group|unfunded|flags|
-- reservation_id, then bucket|kind|amount per line; flags: 1 member limit, 2 group limit, 4 late.
local org_key = KEYS[1]
local now = tonumber(ARGV[1])
local FIELDS = 5 -- per event: key, member, credits, time, reservation id ("" = none)
local n = (#ARGV - 1) / FIELDS

local P = string.sub(org_key, 1, -2)
local results_key = P .. 'r'
local out = {}

clean_holds(P, now)

local keys = {}
for i = 1, n do keys[i] = ARGV[2 + (i - 1) * FIELDS] end
local stored = {}
for first = 1, n, 500 do
  local last = math.min(first + 499, n)
  local got = redis.call('HMGET', results_key, unpack(keys, first, last))
  for j = 1, #got do stored[first + j - 1] = got[j] end
end

local org = load_org(P)
if not org then
  for i = 1, n do out[i] = stored[i] and ('d' .. stored[i]) or 'xunknown_org' end
  return out
end

local groups = load_groups(P)
local members = {}
local shared = nil
local counters = {} -- period start -> {key, expire_at, vals, dirty}
local fresh = {}
local new_results, nr = {}, 0
local cache_ps, cache_pe = nil, nil

local function counters_of(ps, pe)
  local c = counters[ps]
  if not c then
    c = {key = P .. 'c:' .. fmt(ps), expire_at = pe + org.grace + COUNTER_KEEP_MS, vals = {},
         dirty = {}}
    counters[ps] = c
  end
  return c
end

local function get(c, field)
  local v = c.vals[field]
  if v == nil then
    v = num(redis.call('HGET', c.key, field))
    c.vals[field] = v
  end
  return v
end

local function add(c, field, amount)
  if amount ~= 0 then
    c.vals[field] = get(c, field) + amount
    c.dirty[field] = true
  end
end

for i = 1, n do
  local base = 1 + (i - 1) * FIELDS
  local key = ARGV[base + 1]
  local mid = ARGV[base + 2]
  local credits = tonumber(ARGV[base + 3])
  local t = tonumber(ARGV[base + 4])
  local rid = ARGV[base + 5]
  local prior = stored[i] or fresh[key]
  if prior then
    out[i] = 'd' .. prior
  else
    local mem = members[mid]
    if not mem then
      mem = load_member(P, mid)
      members[mid] = mem
    end
    if not mem.known then
      out[i] = 'xunknown_member'
    else
      local ps, pe
      if cache_ps and cache_ps <= t and t < cache_pe then
        ps, pe = cache_ps, cache_pe
      else
        ps, pe = period_at(org, t)
        cache_ps, cache_pe = ps, pe
      end
      local late = now > pe + org.grace
      local at = t
      if late then
        ps, pe = period_at(org, now)
        at = now
      end
      local group = group_of(groups, mem)

      if rid ~= '' then
        local hold = redis.call('HGET', P .. 'h', rid)
        if hold and string.sub(hold, 1, #mid + 1) == mid .. SEP then drop_hold(P, rid, hold) end
      end

      local c = counters_of(ps, pe)
      local lines, unfunded, mflag, gflag = {}, credits, false, false
      if org.active then
        if not shared then shared = load_shared(P) end
        local list = eligible(mem, shared, at)
        local avail = {}
        for j = 1, #list do avail[j] = list[j].left end
        local limit = mem.limit
        if limit == nil then limit = org.default_limit end
        local mroom, groom
        if limit then
          mroom = limit - get(c, (org.shared_policy and 's' or 'a') .. mid)
          if mroom < 0 then mroom = 0 end
        end
        if group ~= '' and groups[group] ~= '' then
          groom = tonumber(groups[group]) - get(c, 'g' .. group)
          if groom < 0 then groom = 0 end
        end
        lines, unfunded, mflag, gflag = draw(list, avail, credits, org.shared_policy, mroom, groom)
      end

      local flags = (mflag and 1 or 0) + (gflag and 2 or 0) + (late and 4 or 0)
      local parts = {mid, fmt(credits), fmt(t), fmt(ps), fmt(pe), group, fmt(unfunded),
                     fmt(flags), rid}
      local np = 9
      local drawn, drawn_shared = 0, 0
      for j = 1, #lines - 1, 2 do
        local b, amount = lines[j], lines[j + 1]
        b.left = b.left - amount
        b.dirty = true
        drawn = drawn + amount
        if b.rank == 2 then drawn_shared = drawn_shared + amount end
        parts[np + 1] = b.id
        parts[np + 2] = b.kind
        parts[np + 3] = fmt(amount)
        np = np + 3
      end
      add(c, 'a' .. mid, drawn)
      add(c, 's' .. mid, drawn_shared)
      add(c, 'g' .. group, drawn)
      add(c, 'd', drawn)
      add(c, 'u', unfunded)

      local result = table.concat(parts, SEP)
      fresh[key] = result
      new_results[nr + 1] = key
      new_results[nr + 2] = result
      nr = nr + 2
      out[i] = 'n' .. result
    end
  end
end

for _, mem in pairs(members) do save_buckets(mem.key, mem.buckets) end
if shared then save_buckets(P .. 'sh', shared) end
for _, c in pairs(counters) do
  local args, na = {}, 0
  for field in pairs(c.dirty) do
    args[na + 1] = field
    args[na + 2] = fmt(c.vals[field])
    na = na + 2
  end
  if na > 0 then
    redis.call('HSET', c.key, unpack(args))
    -- relative to the caller's clock, which is the engine's time
    redis.call('PEXPIRE', c.key, fmt(c.expire_at - now))
  end
end
for first = 1, nr, 1000 do
  redis.call('HSET', results_key, unpack(new_results, first, math.min(first + 999, nr)))
end
return out
