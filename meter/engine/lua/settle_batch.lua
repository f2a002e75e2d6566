-- Settle a batch of usage events of one organization, in order (README "Settling").
-- ARGV: now, then the events packed in one string, each "key|member|credits|time|reservation"
-- (fields separated by \31, each event ended by \30; reservation "" = none).
-- Returns {status, body_1, ..., body_n}: status has one letter per event, "n" (new: body is the
-- result), "d" (stored duplicate: body is the stored result) or "x" (body is the reason).
-- result = member|credits|time|period_start|period_end|group|unfunded|flags|reservation_id,
-- then bucket|kind|amount per line; flags: 1 member limit, 2 group limit, 4 late.
local org_key = KEYS[1]
local now = ARGV[1] + 0
local packed = ARGV[2]

local P = string.sub(org_key, 1, -2)
local results_key = P .. 'r'
local status, out = {}, {}

local keys, mids, amounts, times, rids = {}, {}, {}, {}, {}
local n = 0
-- The key, often the longest field ("<source> <id>", tens of bytes), is found by a plain search
-- (memchr); a pattern's character class costs tens of instructions a byte.
do
  local find, sub, match = string.find, string.sub, string.match
  local i, last = 1, #packed
  while i <= last do
    local a = find(packed, SEP, i, true)
    n = n + 1
    keys[n] = sub(packed, i, a - 1)
    mids[n], amounts[n], times[n], rids[n], i = match(packed,
      '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\30]*)\30()', a + 1)
  end
end

local org = load_org(P)
if org then clean_holds(P, org, now) end

-- The stored result of each event's key (false for none), at most 500 keys an HMGET; most
-- batches need one, whose reply is used as it is.
local stored
if n <= 500 then
  stored = n > 0 and redis.call('HMGET', results_key, unpack(keys, 1, n)) or {}
else
  stored = {}
  for first = 1, n, 500 do
    local last = math.min(first + 499, n)
    local got = redis.call('HMGET', results_key, unpack(keys, first, last))
    for j = 1, #got do stored[first + j - 1] = got[j] end
  end
end

if not org then
  local why = missing_org(P)
  for i = 1, n do
    status[i] = stored[i] and 'd' or 'x'
    out[i + 1] = stored[i] or why
  end
  out[1] = table.concat(status)
  return out
end

local shared = nil

-- The members of the events not settled yet: one HMGET (and, when the org is active, the shared
-- pool's lazy owner, read when a draw first walks to it; else nothing is drawn). Then the billing
-- groups those members name, with their limits (false: no such group): one HMGET of those, not
-- of the organization's every group.
local members, groups = {}, {}
do
  local ids, nid = {}, 0
  for i = 1, n do
    if not stored[i] and not members[mids[i]] then
      members[mids[i]] = true
      nid = nid + 1
      ids[nid] = mids[i]
    end
  end
  local gids, ng = {}, 0
  for first = 1, nid, 500 do
    local last = math.min(first + 499, nid)
    local got = redis.call('HMGET', P .. 'm', unpack(ids, first, last))
    for j = 1, #got do
      local mem = lazy_member(ids[first + j - 1], got[j] or nil)
      members[mem[M_ID]] = mem
      local gid = mem[M_GROUP]
      if gid ~= '' and groups[gid] == nil then
        groups[gid] = false
        ng = ng + 1
        gids[ng] = gid
      end
    end
  end
  if org.active then shared = shared_pool(P) end
  for first = 1, ng, 500 do
    local got = redis.call('HMGET', P .. 'g', unpack(gids, first, math.min(first + 499, ng)))
    for j = 1, #got do groups[gids[first + j - 1]] = got[j] end
  end
end

-- Pass 1: period (a record shared by its events) and whether it is late, for each event not
-- already settled; group of each member; which counters the batch reads.
local ev_c, ev_at, ev_late = {}, {}, {}
-- period start -> {ps, pe, ss, es, span, key, expire_at, fields, seen, vals, dirty}; span is the
-- part of a result between its time and its group
local periods = {}
local function period_record(ps, pe, ss, es) -- (ss, es: ps and pe as strings, when known)
  local c = periods[ps]
  if not c then
    ss, es = ss or fmt(ps), es or fmt(pe)
    c = {ps = ps, pe = pe, ss = ss, es = es, span = SEP .. ss .. SEP .. es .. SEP,
         key = P .. 'c:' .. ss, expire_at = pe + org.grace + COUNTER_KEEP_MS,
         fields = {'d', 'u', '_'}, nf = 3, seen = {}, vals = {}, dirty = {}}
    periods[ps] = c
  end
  return c
end
-- group id -> the group's record for this batch: id, counter field, limit (nil: none)
local group_records = {}
-- The period containing now, which the org hash caches: most events fall in it, and the
-- calendar arithmetic is then done once a period, not once a call.
local cur = period_record(current_period(org, now))
local grace, shared_policy = org.grace, org.shared_policy
for i = 1, n do
  if not stored[i] then
    local mem = members[mids[i]]
    if mem[M_SEATED] ~= nil then
      local t = times[i] + 0
      if not (cur and cur.ps <= t and t < cur.pe) then cur = period_record(period_at(org, t)) end
      local c = cur
      if now > c.pe + grace then
        ev_late[i] = true
        c = period_record(current_period(org, now))
        t = now
      end
      ev_c[i], ev_at[i] = c, t
      if mem[M_PERIOD] ~= c then -- first seen in this period (or again after another one)
        mem[M_PERIOD] = c
        local g = mem[M_GRP]
        if not g then
          local gid = group_of(groups, mem)
          g = group_records[gid]
          if not g then
            local glimit = groups[gid]
            g = {id = gid, field = 'g' .. gid, limit = glimit and glimit ~= '' and tonumber(glimit)}
            group_records[gid] = g
          end
          mem[M_GRP], mem[M_FA] = g, 'a' .. mem[M_ID]
          if shared_policy then mem[M_FS] = 's' .. mem[M_ID] end
        end
        -- The member's shared-pool counter bounds its room only under the shared limit policy;
        -- else it is read when the member first draws from the pool (pass 2).
        local fields, nf = c.fields, c.nf + 1
        fields[nf] = mem[M_FA]
        if shared_policy then
          nf = nf + 1
          fields[nf] = mem[M_FS]
        end
        if not c.seen[g] then
          c.seen[g] = true
          nf = nf + 1
          fields[nf] = g.field
        end
        c.nf = nf
      end
    end
  end
end
for _, c in pairs(periods) do
  local fields, vals = c.fields, c.vals
  -- (a period no event falls in, such as the current one when all are older, has no fields
  -- past d u _, and is neither read nor written)
  for first = 1, c.nf > 3 and c.nf or 0, 500 do
    local last = math.min(first + 499, c.nf)
    local got = redis.call('HMGET', c.key, unpack(fields, first, last))
    if first == 1 then
      c.padded = got[3]
      got[3] = false
    end
    for j = 1, #got do
      local v = got[j]
      vals[fields[first + j - 1]] = v and v + 0 or 0 -- (num, inline: a batch reads hundreds)
    end
  end
end

-- Pass 2: settle in order.
local fresh = {}
local new_results, nr = {}, 0
local scratch = {false, false, false, false}
local SEP_0_SEP = SEP .. '0' .. SEP
local active, default_limit = org.active, org.default_limit
for i = 1, n do
  local key = keys[i]
  local prior = stored[i] or fresh[key]
  local c = ev_c[i]
  if prior then
    status[i] = 'd'
    out[i + 1] = prior
  elseif not c then
    status[i] = 'x'
    out[i + 1] = 'unknown_member'
  else
    local mid = mids[i]
    local mem = members[mid]
    local amount_s = amounts[i]
    local credits = amount_s + 0
    local rid = rids[i]
    local vals, dirty = c.vals, c.dirty
    local g, fa, fs = mem[M_GRP], mem[M_FA], mem[M_FS]
    local group, gf = g.id, g.field
    local lines, nl, unfunded, mflag, gflag = nil, 0, credits, false, false
    local whole = nil -- the member's bucket, when the draw is one line of it of all the credits
    if active then
      local limit = mem[M_LIMIT]
      if limit == nil then limit = default_limit end
      local mroom, groom
      if limit then
        mroom = limit - vals[shared_policy and fs or fa]
        if mroom < 0 then mroom = 0 end
      end
      local glimit = g.limit
      if glimit then
        groom = glimit - vals[gf]
        if groom < 0 then groom = 0 end
      end
      -- Most events are covered whole by the member's first bucket: then the draw is that one
      -- line, taken here without draw_at's walk (which would find the same).
      local t, b = ev_at[i], mem[M_B + 1] or member_bucket(mem, 1)
      if credits > 0 and b and b.rank < 2 and b.from <= t and t < b.exp and b.left >= credits
          and (shared_policy or not mroom or mroom >= credits)
          and (not groom or groom >= credits) then
        whole, unfunded = b, 0
      else
        lines, nl, unfunded, mflag, gflag = draw_at(mem, shared, t, credits, shared_policy, mroom,
          groom, 'left', scratch)
      end
    end

    local drawn, drawn_shared = 0, 0
    if whole then
      drawn = credits
    else
      for j = 1, nl - 1, 2 do
        local amount = lines[j + 1]
        drawn = drawn + amount
        if lines[j].rank == 2 then drawn_shared = drawn_shared + amount end
      end
    end
    if drawn_shared ~= 0 and not (fs and vals[fs]) then -- its first draw from the pool here
      if not fs then
        fs = 's' .. mid
        mem[M_FS] = fs
      end
      vals[fs] = num(redis.call('HGET', c.key, fs))
    end
    -- Counters stay exact (below 2^53): an event that would push one past is refused whole.
    -- A sum of two values below 2^53 rounds, if at all, to a double above MAX_AMOUNT.
    -- (The sums are the counters' values once the event is settled.)
    local d, a, gsum
    if drawn ~= 0 then d, a, gsum = vals.d + drawn, vals[fa] + drawn, vals[gf] + drawn end
    if (unfunded ~= 0 and vals.u + unfunded > MAX_AMOUNT) or (drawn ~= 0 and (d > MAX_AMOUNT
        or a > MAX_AMOUNT or gsum > MAX_AMOUNT
        or (drawn_shared ~= 0 and vals[fs] + drawn_shared > MAX_AMOUNT))) then
      status[i] = 'x'
      out[i + 1] = 'counter_overflow'
    else
      if rid ~= '' and org.hm then
        local hold = redis.call('HGET', P .. 'h', rid)
        if hold and string.sub(hold, 1, #mid + 1) == mid .. SEP then drop_hold(P, rid, hold) end
      end
      local flags = '0'
      if mflag or gflag or ev_late[i] then
        flags = FLAG_CODE[(mflag and 1 or 0) + (gflag and 2 or 0) + (ev_late[i] and 4 or 0)]
      end
      local result
      if whole then -- most events: the result is built in one piece
        result = mid .. SEP .. amount_s .. SEP .. times[i] .. c.span .. group .. SEP_0_SEP .. flags
          .. SEP .. rid .. SEP .. whole.id .. SEP .. whole.kind .. SEP .. amount_s
      elseif nl == 2 then -- a draw from one bucket, of part of the credits
        local b, amount = lines[1], lines[2]
        result = mid .. SEP .. amount_s .. SEP .. times[i] .. c.span .. group
          .. SEP .. (unfunded == 0 and '0' or fmt(unfunded)) .. SEP .. flags
          .. SEP .. rid .. SEP .. b.id .. SEP .. b.kind
          .. SEP .. (amount == credits and amount_s or fmt(amount))
      else
        result = mid .. SEP .. amount_s .. SEP .. times[i] .. c.span .. group
          .. SEP .. (unfunded == 0 and '0' or fmt(unfunded)) .. SEP .. flags
          .. SEP .. rid
        for j = 1, nl - 1, 2 do
          result = result .. SEP .. lines[j].id .. SEP .. lines[j].kind .. SEP .. fmt(lines[j + 1])
        end
      end
      if whole then
        whole.left = whole.left - credits
        mem[M_DIRTY] = true
      else
        for j = 1, nl - 1, 2 do
          local b = lines[j]
          b.left = b.left - lines[j + 1]
          b.owner[M_DIRTY] = true
        end
      end
      if drawn ~= 0 then
        vals[fa], vals[gf], vals.d = a, gsum, d
        dirty[fa], dirty[gf], dirty.d = true, true, true
        if drawn_shared ~= 0 then
          vals[fs] = vals[fs] + drawn_shared
          dirty[fs] = true
        end
      end
      if unfunded ~= 0 then
        vals.u = vals.u + unfunded
        dirty.u = true
      end

      fresh[key] = result
      new_results[nr + 1] = key
      new_results[nr + 2] = result
      nr = nr + 2
      status[i] = 'n'
      out[i + 1] = result
    end
  end
end

do
  local args, na = {}, 0
  for id, mem in pairs(members) do
    if mem[M_DIRTY] then
      args[na + 1] = id
      args[na + 2] = encode_member(mem)
      na = na + 2
    end
  end
  for first = 1, na, 1000 do
    redis.call('HSET', P .. 'm', unpack(args, first, math.min(first + 999, na)))
  end
  if shared and shared[M_DIRTY] then redis.call('SET', P .. 'sh', encode_member(shared)) end
end
for _, c in pairs(periods) do
  local args, na = {}, 0
  for field in pairs(c.dirty) do
    args[na + 1] = field
    args[na + 2] = c.vals[field] -- (a number: the server writes it with %.17g, exact below 2^53)
    na = na + 2
  end
  if na > 0 then
    -- Whoever pads a counters hash gives it its expiry (restore does too), so a hash with the pad
    -- has it already: the instant is fixed by the period, set relative to the caller's clock,
    -- which is the engine's time. A hash without it (made by a void's HINCRBY) gets both here.
    if not c.padded then
      args[na + 1] = '_'
      args[na + 2] = COUNTER_PAD
    end
    redis.call('HSET', c.key, unpack(args))
    if not c.padded then redis.call('PEXPIRE', c.key, fmt(c.expire_at - now)) end
  end
end
for first = 1, nr, 1000 do
  redis.call('HSET', results_key, unpack(new_results, first, math.min(first + 999, nr)))
end
out[1] = table.concat(status)
return out
