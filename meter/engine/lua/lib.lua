-- Shared helpers, defined once when the engine's function library loads (see redis.py), before
-- the scripts of this folder, each registered as a function. The top level runs where Redis
-- offers only the loading API: it defines, and computes with literals only.
-- Every key of an organization starts with the prefix P = "meter:{<org_id>}:", derived from the
-- script's KEYS[1] (the org's config key P .. "o"), so all of them hash to KEYS[1]'s slot:
--   o           hash   c: org config status|period_kind|anchor|rolling_days|limit_policy|
--                      default_limit|grace; ps pe: the last current period; hm: a lower bound of
--                      the live holds' expiries, absent when there are none; b: set while the
--                      org is being rebuilt. The org's state is all there (its loss marker) iff
--                      c is set and b is not: a shard that restarts empty loses it with the data
--   g           hash   billing group id -> period limit ("" = unlimited)
--   m           hash   member id -> its config and buckets, one string in either of two
--                      encodings (every function reads both; the library writes the one the
--                      Python side chose, WRITE_BINARY):
--                      binary: the byte \2, then struct '<Bi8I4c0I4': flags (1 config
--                      present, 2 seated, 4 removed, 8 limit set), limit, group, the number of
--                      buckets n; then the n buckets' credits left ('<i8' each) in burn-down
--                      order; then each bucket's head in that order, '<c1i8i8i8I4c0': kind,
--                      valid_from, expires_at, granted_at, bucket id. Numbers are 64-bit
--                      integers, read without a pattern or a decimal conversion, and a
--                      bucket's credits left is rewritten in place;
--                      text (what earlier releases wrote): seated|limit|group|removed, then per
--                      bucket in burn-down order \30 kind valid_from|expires_at|granted_at|
--                      bucket_id, then \29 and the buckets' credits left in the same order,
--                      |-separated (kind: one letter; seated "1"/"0", limit "" = org default,
--                      removed "1"/""); a member with grants but never put has no config part
--                      (the value starts with \30)
--   sh          string the shared pool's buckets, same encodings without a config (flags 0)
--   c:<start>   hash   counters of the period starting at <start>: a<m> s<m> g<group> d u, and
--                      the field _ (COUNTER_PAD), which keeps the hash in hashtable encoding;
--                      whoever writes the pad sets the hash's expiry
--   r           hash   settlement key -> stored result, until confirmed
--   v           hash   settlement key -> void result
--   h / hx / ha hash / zset / hash: live holds by id, their expiry, and the sums they hold
--                      (a<m> s<m> g<group> b<bucket>); h has the field \31 and ha the field _,
--                      both COUNTER_PAD, for the reason the counters have it (an org with
--                      hundreds of live holds reads several fields of ha per check); both go
--                      with the pads alone when a cleaning finds no hold left
--   q           string set while the organization is quarantined (meter/quarantine.py): it then
--                      has no other key, and its checks and events answer org_quarantined
-- Amounts and instants are integers below 2^53, exact in Lua's doubles; they cross the
-- boundary as decimal strings, never through cjson.

local SEP = '\31'
local MAX_AMOUNT = 9007199254740991 -- types.MAX_AMOUNT, 2^53 - 1
local DAY = 86400000
local COUNTER_KEEP_MS = 7 * DAY
local PRUNE_AFTER_MS = 7 * DAY -- model.PRUNE_AFTER_MS
-- A value longer than the server's hash-max-listpack-value (64 bytes by default), stored under
-- the field _ of every counters hash: a hash holding one is a hashtable for good. As a listpack (up
-- to 512 fields by default) each field read or written is a scan of the whole hash, and a batch
-- reads and writes two fields per member it settles.
-- A literal: the library's top level runs where Redis 7.0 offers no `string`.
local COUNTER_PAD = '________________________________________________________________________'
-- Rank of a bucket by its kind code (seat, personal, shared, on_demand).
local RANK_OF = {s = 0, p = 1, h = 2, o = 3}
-- A settlement's flags (1 member limit, 2 group limit, 4 late) as their stored digit.
local FLAG_CODE = {[0] = '0', '1', '2', '3', '4', '5', '6', '7'}

-- Integers as decimal strings (%d converts through a 64-bit long: exact below 2^53, and twice
-- as fast as tostring).
local function fmt(n)
  return string.format('%d', n)
end

local function split(s)
  local out, n, i = {}, 0, 1
  while true do
    local j = string.find(s, SEP, i, true)
    n = n + 1
    if not j then
      out[n] = string.sub(s, i)
      return out
    end
    out[n] = string.sub(s, i, j - 1)
    i = j + 1
  end
end

-- The period containing t: start <= t < end. The calendar helpers are local to it, so a script
-- pays for them only when it computes a period.
local function period_at(org, t)
  local floor = math.floor
  -- days since 1970-01-01 <-> proleptic Gregorian date (same as periods.py)
  local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = m > 2 and m - 3 or m + 9
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
  end
  local function civil_from_days(z)
    z = z + 719468
    local era = floor(z / 146097)
    local doe = z - era * 146097
    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
    local mp = floor((5 * doy + 2) / 153)
    local d = doy - floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    local y = yoe + era * 400
    if m <= 2 then y = y + 1 end
    return y, m, d
  end
  local function add_months(t0, k)
    local days = floor(t0 / DAY)
    local tod = t0 - days * DAY
    local y, m, d = civil_from_days(days)
    local months = y * 12 + (m - 1) + k
    local ty = floor(months / 12)
    local tm = months - ty * 12 + 1
    local dim = 31
    if tm ~= 12 then dim = days_from_civil(ty, tm + 1, 1) - days_from_civil(ty, tm, 1) end
    if d > dim then d = dim end
    return days_from_civil(ty, tm, d) * DAY + tod
  end
  local function period_start(k)
    if org.monthly then return add_months(org.anchor, k) end
    return org.anchor + k * org.len
  end
  local k
  if org.monthly then
    local ay, am = civil_from_days(floor(org.anchor / DAY))
    local ty, tm = civil_from_days(floor(t / DAY))
    k = (ty * 12 + tm) - (ay * 12 + am)
    if period_start(k) > t then k = k - 1 end
  else
    k = floor((t - org.anchor) / org.len)
  end
  return period_start(k), period_start(k + 1)
end

-- The org's config, or nil when its state is not all there: no config (never applied, or lost
-- with its shard), or the field b set (a rebuild of it is in progress; `rebuilding` reads it
-- anyway, for restore).
local function load_org(P, rebuilding)
  local v = redis.call('HMGET', P .. 'o', 'c', 'ps', 'pe', 'hm', 'b')
  if not v[1] or (v[5] and not rebuilding) then return nil end
  local st, pk, an, rd, lp, dl, gr = string.match(v[1],
    '^([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\31]*)\31(.*)$')
  -- (numbers by arithmetic, `s + 0`: one strtod, where tonumber makes two)
  local org = {
    key = P .. 'o', active = st == 'active', monthly = pk == 'monthly', anchor = an + 0,
    len = rd * DAY, shared_policy = lp == 'shared', grace = gr + 0,
  }
  if dl ~= '' then org.default_limit = dl + 0 end
  if v[2] then org.ps, org.pe, org.ss, org.es = v[2] + 0, v[3] + 0, v[2], v[3] end
  if v[4] then org.hm = v[4] + 0 end
  return org
end

-- period_at for instants near now: the org hash remembers the last period computed this way
-- (fields ps pe, dropped by put_org), which saves the calendar arithmetic on most calls.
-- Also returns them as strings.
local function current_period(org, t)
  local ps, pe = org.ps, org.pe
  if ps and ps <= t and t < pe then return ps, pe, org.ss, org.es end
  ps, pe = period_at(org, t)
  local ss, es = fmt(ps), fmt(pe)
  org.ps, org.pe, org.ss, org.es = ps, pe, ss, es
  redis.call('HSET', org.key, 'ps', ss, 'pe', es)
  return ps, pe, ss, es
end

-- Bytewise string order (Lua's own < follows the server's collation locale).
local function id_less(a, b)
  local la, lb = #a, #b
  local n = la < lb and la or lb
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return la < lb
end

-- Whether bucket a comes before bucket b in burn-down order (buckets of decode_owner): kind,
-- sooner expiry, older grant, then bucket id (bytewise).
local function burns_before(a, b)
  local ra, rb = RANK_OF[a.kind], RANK_OF[b.kind]
  if ra ~= rb then return ra < rb end
  if a.exp ~= b.exp then return a.exp < b.exp end
  if a.granted ~= b.granted then return a.granted < b.granted end
  return id_less(a.id, b.id)
end

-- An owner's value (a member's, or the shared pool's; see the layout above) in either encoding,
-- whole: its config (nil for the pool, or a member with grants but never put: {seated, limit
-- (nil: the org's default), group, removed}) and its buckets in stored order, which is burn-down
-- order: {kind, from, exp, granted, id, left}, numbers as numbers. For the scripts that change
-- an owner's buckets or config; settling and checking read a member lazily (lazy_member).
local function decode_owner(v)
  local cfg, out, n = nil, {}, 0
  if string.byte(v, 1) == 2 then
    local unpack_at = struct.unpack
    local flags, limit, group, nb, pos = unpack_at('<Bi8I4c0I4', v, 2)
    if flags % 2 == 1 then
      cfg = {seated = flags % 4 >= 2, limit = flags >= 8 and limit or nil, group = group,
             removed = flags % 8 >= 4}
    end
    local lpos = pos
    pos = pos + 8 * nb
    for i = 1, nb do
      local kind, from, exp, granted, id, nxt = unpack_at('<c1i8i8i8I4c0', v, pos)
      out[i] = {kind = kind, from = from, exp = exp, granted = granted, id = id,
                left = (unpack_at('<i8', v, lpos))}
      pos, lpos = nxt, lpos + 8
    end
    return cfg, out
  end
  local seated, limit, group, removed = string.match(v, '^([01])\31([^\31]*)\31([^\31]*)\31([^\30\29]*)')
  if seated then
    cfg = {seated = seated == '1', limit = limit ~= '' and limit + 0 or nil, group = group,
           removed = removed ~= ''}
  end
  for kind, from, exp, granted, id in string.gmatch(v, '\30(%a)([^\31]*)\31([^\31]*)\31([^\31]*)\31([^\30\29]*)') do
    n = n + 1
    out[n] = {kind = kind, from = from + 0, exp = exp + 0, granted = granted + 0, id = id}
  end
  if n > 0 then
    local i = 0
    for left in string.gmatch(string.sub(v, string.find(v, '\29', 1, true) + 1), '[^\31]+') do
      i = i + 1
      out[i].left = left + 0
    end
  end
  return cfg, out
end

-- An owner's value from its config and buckets (decode_owner's), in the library's encoding:
-- binary, or text while older processes that read only text may still run (README "Redis
-- layout").
local function encode_owner(cfg, buckets)
  local n = #buckets
  if WRITE_BINARY then
    local pack = struct.pack
    local flags, limit, group = 0, 0, ''
    if cfg then
      flags = 1 + (cfg.seated and 2 or 0) + (cfg.removed and 4 or 0)
      if cfg.limit then flags, limit = flags + 8, cfg.limit end
      group = cfg.group
    end
    local lefts, heads = {}, {}
    for i = 1, n do
      local b = buckets[i]
      lefts[i] = pack('<i8', b.left)
      heads[i] = pack('<c1i8i8i8I4c0', b.kind, b.from, b.exp, b.granted, #b.id, b.id)
    end
    return '\2' .. pack('<Bi8I4c0I4', flags, limit, #group, group, n) .. table.concat(lefts)
      .. table.concat(heads)
  end
  local config = ''
  if cfg then
    config = (cfg.seated and '1' or '0') .. SEP .. (cfg.limit and fmt(cfg.limit) or '') .. SEP
      .. cfg.group .. SEP .. (cfg.removed and '1' or '')
  end
  local heads, lefts = {}, {}
  for i = 1, n do
    local b = buckets[i]
    heads[i] = '\30' .. b.kind .. fmt(b.from) .. SEP .. fmt(b.exp) .. SEP .. fmt(b.granted) .. SEP
      .. b.id
    lefts[i] = fmt(b.left)
  end
  return config .. table.concat(heads) .. '\29' .. table.concat(lefts, SEP)
end

-- An owner's value (member_id "": the shared pool's string; else the member's field of the hash
-- m), decoded whole; an owner not stored has no config and no buckets.
local function load_owner(P, member_id)
  local v
  if member_id == '' then
    v = redis.call('GET', P .. 'sh')
  else
    v = redis.call('HGET', P .. 'm', member_id)
  end
  if not v then return nil, {} end
  return decode_owner(v)
end

local function store_owner(P, member_id, cfg, buckets)
  if member_id == '' then
    redis.call('SET', P .. 'sh', encode_owner(nil, buckets))
  else
    redis.call('HSET', P .. 'm', member_id, encode_owner(cfg, buckets))
  end
end

-- A member for settling or checking (member_id, its value in m or nil): its config decoded now,
-- each bucket (head and credits left) only when a draw walks to it, since most events are
-- covered by the first eligible bucket. An array, indexed by the M_ names below: a table
-- constructor fills an array in one step, where each named field is a hash insert of its own,
-- and a batch makes one of these for each member it settles.
--   M_ID, M_SEATED (nil: a member never put, unknown), M_LIMIT (nil: the org's default),
--   M_GROUP, M_REMOVED; M_NB: how many buckets are decoded so far; M_V: the value, M_P:
--   where its credits left start (text: the offset of its \29), M_POS: where the next bucket
--   head starts, M_LPOS: its credits left; M_DIRTY: a bucket's credits left changed; and for
--   settle_batch, M_GRP (the member's group record), M_FA and M_FS (its counter fields) and
--   M_PERIOD (the period record it was last seen in), created here so the array is allocated
--   once; M_BIN: the value is binary; then the buckets decoded so far, in order, the k-th at
--   M_B + k (in the same array, with room for two: most draws read one or two buckets, and a
--   table of their own cost a table and its growth for each member).
-- The shared pool is such an array too (shared_pool), whose value is read at M_KEY when a draw
-- first walks to it. The owner of a bucket (bucket.owner) is a member or the pool.
-- A bucket read this way: {id, kind, rank, from, exp, left, owner}.
local M_ID, M_SEATED, M_LIMIT, M_GROUP, M_REMOVED, M_NB, M_V, M_P = 1, 2, 3, 4, 5, 6, 7, 8
local M_POS, M_LPOS, M_DIRTY, M_GRP, M_FA, M_FS, M_PERIOD, M_KEY = 9, 10, 11, 12, 13, 14, 15, 16
local M_BIN, M_B = 17, 17
local function lazy_member(member_id, v)
  local seated, limit, group, removed = nil, nil, '', nil -- a member never put: no config
  local p, pos, lpos, bin
  if not v then
    v, p, pos, lpos, bin = '\29', 1, 1, 2, false
  elseif string.byte(v, 1) == 2 then
    local flags, lim, grp, nb, at = struct.unpack('<Bi8I4c0I4', v, 2)
    if flags % 2 == 1 then
      seated, limit, group, removed = flags % 4 >= 2, flags >= 8 and lim or nil, grp, flags % 8 >= 4
    end
    p, pos, lpos, bin = at, at + 8 * nb, at, true
  else
    local s, lim, grp, rem, at = string.match(v, '^([01])\31([^\31]*)\31([^\31]*)\31([^\30\29]*)()')
    if s then
      seated, limit, group, removed = s == '1', lim ~= '' and lim + 0 or nil, grp, rem ~= ''
    end
    p = string.find(v, '\29', at or 1, true)
    pos, lpos, bin = at or 1, p + 1, false
  end
  return {member_id, seated, limit, group, removed, 0, v, p, pos, lpos, false, false, false, false,
          false, false, bin, false, false}
end

-- The k-th bucket of a lazy_member (nil past the last), decoding the buckets up to it.
local function member_bucket(m, k)
  local b = m[M_B + k]
  if b then return b end
  local v = m[M_V]
  if not v then -- the shared pool, first reached
    v = redis.call('GET', m[M_KEY]) or '\29'
    if string.byte(v, 1) == 2 then
      local _, _, _, nb, pos = struct.unpack('<Bi8I4c0I4', v, 2)
      m[M_V], m[M_P], m[M_POS], m[M_LPOS], m[M_BIN] = v, pos, pos + 8 * nb, pos, true
    else
      local p = string.find(v, '\29', 1, true)
      m[M_V], m[M_P], m[M_LPOS] = v, p, p + 1
    end
  end
  if m[M_BIN] then
    local unpack_at = struct.unpack
    local pos, lpos = m[M_POS], m[M_LPOS]
    for i = m[M_NB] + 1, k do
      if pos > #v then
        m[M_POS], m[M_LPOS], m[M_NB] = pos, lpos, i - 1
        return nil
      end
      local kind, from, exp, _, id, nxt = unpack_at('<c1i8i8i8I4c0', v, pos)
      b = {id = id, kind = kind, rank = RANK_OF[kind], from = from, exp = exp,
           left = (unpack_at('<i8', v, lpos)), owner = m}
      m[M_B + i] = b
      pos, lpos = nxt, lpos + 8
    end
    m[M_POS], m[M_LPOS], m[M_NB] = pos, lpos, k
    return b
  end
  for i = m[M_NB] + 1, k do
    local kind, from, exp, id, nxt = string.match(v, '^\30(.)([^\31]*)\31([^\31]*)\31[^\31]*\31([^\30\29]*)()', m[M_POS])
    if not kind then return nil end
    local left, lnxt = string.match(v, '^([^\31]*)()', m[M_LPOS])
    b = {id = id, kind = kind, rank = RANK_OF[kind], from = from + 0, exp = exp + 0,
         left = left + 0, owner = m}
    m[M_B + i], m[M_NB] = b, i
    m[M_POS], m[M_LPOS] = nxt, lnxt + 1
  end
  return b
end

-- A lazy_member's value with the credits left of its decoded buckets as they are now, in the
-- library's encoding. The decoded buckets come first in the value: in the encoding written, their
-- credits left are replaced in place; a value of the other encoding is decoded whole and written
-- again.
local function encode_member(m)
  local k, v = m[M_NB], m[M_V]
  if m[M_BIN] ~= WRITE_BINARY then
    local cfg, all = decode_owner(v)
    for i = 1, k do all[i].left = m[M_B + i].left end
    return encode_owner(cfg, all)
  end
  local p = m[M_P]
  if WRITE_BINARY then
    if k == 1 then
      return string.sub(v, 1, p - 1) .. struct.pack('<i8', m[M_B + 1].left) .. string.sub(v, p + 8)
    end
    local lefts = {}
    for i = 1, k do lefts[i] = struct.pack('<i8', m[M_B + i].left) end
    return string.sub(v, 1, p - 1) .. table.concat(lefts) .. string.sub(v, p + 8 * k)
  end
  local lpos = m[M_LPOS]
  if k == 1 and lpos <= #v then -- one bucket drawn of several: one string, no list
    return string.sub(v, 1, p) .. fmt(m[M_B + 1].left) .. SEP .. string.sub(v, lpos)
  end
  local lefts = {}
  for i = 1, k do lefts[i] = fmt(m[M_B + i].left) end
  local out = string.sub(v, 1, p) .. table.concat(lefts, SEP)
  if lpos <= #v then out = out .. SEP .. string.sub(v, lpos) end
  return out
end

-- The bucket at positions i (member) and j (shared pool) of the burn-down order of a
-- lazy_member and the shared_pool: the member's seat and personal buckets, the pool, then the
-- member's on_demand buckets. Returns it (nil past the end) and the positions after it.
local function next_bucket(m, shared, i, j)
  local b = m[M_B + i] or member_bucket(m, i)
  if b and b.rank < 2 then return b, i + 1, j end
  local s = shared[M_B + j] or member_bucket(shared, j)
  if s then return s, i, j + 1 end
  if b then return b, i + 1, j end
  return nil, i, j
end

-- The greedy draw of README "Limits" over the buckets usable at t, walked in burn-down order
-- straight from a lazy_member and the shared pool, taking at most the bucket's field `field` (left,
-- or what a check found available): flat {bucket, amount, ...} and its length, unfunded, flags.
-- The lines go into `into` when given (a table the caller reuses: entries past the length are
-- stale), else into a new table.
local function draw_at(m, shared, t, need, shared_policy, mroom, groom, field, into)
  local lines, nl, mflag, gflag = into or {false, false}, 0, false, false
  local i, j, b = 1, 1, nil
  while need > 0 do
    b, i, j = next_bucket(m, shared, i, j)
    if not b then break end
    local a = b.from <= t and t < b.exp and b[field]
    if a and a > 0 then
      local counted = (not shared_policy) or b.rank == 2
      local take = need < a and need or a
      if counted and mroom and mroom < take then take = mroom; mflag = true end
      if groom and groom < take then take = groom; gflag = true end
      if take > 0 then
        lines[nl + 1] = b
        lines[nl + 2] = take
        nl = nl + 2
        need = need - take
        if counted and mroom then mroom = mroom - take end
        if groom then groom = groom - take end
      end
    end
  end
  return lines, nl, need, mflag, gflag
end

local function load_member(P, member_id)
  return lazy_member(member_id, redis.call('HGET', P .. 'm', member_id))
end

-- The shared pool as a lazy_member without config, read when a draw first walks to its
-- buckets: most events are covered by their member's seat.
local function shared_pool(P)
  return {'', nil, nil, '', nil, 0, nil, nil, 1, nil, false, false, false, false, false, P .. 'sh',
          false, false, false}
end

-- The buckets of a lazy_member and the shared pool usable at t, in burn-down order.
local function eligible(m, shared, t)
  local out, n, i, j, b = {}, 0, 1, 1, nil
  while true do
    b, i, j = next_bucket(m, shared, i, j)
    if not b then return out end
    if b.from <= t and t < b.exp then
      n = n + 1
      out[n] = b
    end
  end
end

-- The member's billing group if it exists, else Unassigned ("").
local function group_of(groups, mem)
  local group = mem[M_GROUP]
  if group ~= '' and groups[group] then return group end
  return ''
end

local function hold_dec(ha, field, amt)
  if amt ~= 0 then
    local left = redis.call('HINCRBY', ha, field, fmt(-amt))
    if left <= 0 then redis.call('HDEL', ha, field) end
  end
end

-- A hold: member|expires|group|drawn|drawn_shared|bucket|amount|bucket|amount...
local function drop_hold(P, rid, enc)
  local f = split(enc)
  local ha = P .. 'ha'
  local drawn = tonumber(f[4])
  hold_dec(ha, 'a' .. f[1], drawn)
  hold_dec(ha, 's' .. f[1], tonumber(f[5]))
  hold_dec(ha, 'g' .. f[3], drawn)
  for i = 6, #f - 1, 2 do hold_dec(ha, 'b' .. f[i], tonumber(f[i + 1])) end
  redis.call('HDEL', P .. 'h', rid)
  redis.call('ZREM', P .. 'hx', rid)
end

-- Drop the holds expired at now. org.hm (nil = no holds) is kept a lower bound of the live holds'
-- expiries: reserve lowers it, this recomputes it, dropping a hold leaves it.
local function clean_holds(P, org, now)
  local hm = org.hm
  if not hm or hm > now then return end
  local hx = P .. 'hx'
  local expired = redis.call('ZRANGEBYSCORE', hx, '-inf', fmt(now))
  for i = 1, #expired do
    local enc = redis.call('HGET', P .. 'h', expired[i])
    if enc then
      drop_hold(P, expired[i], enc)
    else
      redis.call('ZREM', hx, expired[i])
    end
  end
  local first = redis.call('ZRANGE', hx, 0, 0, 'WITHSCORES')
  if first[1] then
    org.hm = tonumber(first[2])
    redis.call('HSET', org.key, 'hm', first[2])
  else
    org.hm = nil
    redis.call('HDEL', org.key, 'hm')
    redis.call('DEL', P .. 'h', P .. 'ha') -- what is left is their pads
  end
end

local function num(v)
  if v then return v + 0 end
  return 0
end

-- Why an organization has no config: quarantined (its marker q) or not known. Read only when
-- the config is missing, so known organizations pay nothing for it.
local function missing_org(P)
  if redis.call('EXISTS', P .. 'q') == 1 then return 'org_quarantined' end
  return 'unknown_org'
end

-- The check of README "Checks and reservations" at now (org: load_org's, or nil). Returns a
-- table: reason (or nil), and for a simulated draw: avail per kind, mroom, groom, pend_s, lines
-- and nl (draw_at's), unfunded, group, and list and held: the eligible buckets and the held sums
-- read (HMGET of ha: a<member> s<member> g<group> then b<bucket> per bucket of list; {} when
-- there are no holds).
local function check_core(P, org, mid, credits, now)
  if not org then return {reason = missing_org(P)} end
  local mem = load_member(P, mid)
  if mem[M_SEATED] == nil or mem[M_REMOVED] then return {reason = 'unknown_member'} end
  if not org.active then return {reason = 'org_inactive'} end
  if not mem[M_SEATED] then return {reason = 'no_seat'} end

  local _, _, ss, es = current_period(org, now)
  local group, glimit = '', nil
  if mem[M_GROUP] ~= '' then
    glimit = redis.call('HGET', P .. 'g', mem[M_GROUP])
    if glimit then group = mem[M_GROUP] end
  end
  local shared = shared_pool(P)
  local list = eligible(mem, shared, now)
  local held = {}
  if org.hm then
    local fields = {'a' .. mid, 's' .. mid, 'g' .. group}
    for i = 1, #list do fields[i + 3] = 'b' .. list[i].id end
    held = redis.call('HMGET', P .. 'ha', unpack(fields))
  end
  local used = redis.call('HMGET', P .. 'c:' .. ss, 'a' .. mid, 's' .. mid, 'g' .. group)

  local limit = mem[M_LIMIT]
  if limit == nil then limit = org.default_limit end
  local mroom, groom
  if limit then
    local k = org.shared_policy and 2 or 1
    mroom = limit - num(used[k]) - num(held[k])
    if mroom < 0 then mroom = 0 end
  end
  if group ~= '' and glimit ~= '' then
    groom = tonumber(glimit) - num(used[3]) - num(held[3])
    if groom < 0 then groom = 0 end
  end

  local per_kind = {s = 0, p = 0, h = 0, o = 0}
  for i = 1, #list do
    local b = list[i]
    local a = b.left - num(held[i + 3])
    if a < 0 then a = 0 end
    b.avail = a
    per_kind[b.kind] = per_kind[b.kind] + a
  end
  local lines, nl, unfunded, mflag, gflag = draw_at(mem, shared, now, credits, org.shared_policy,
    mroom, groom, 'avail')
  local reason
  if unfunded > 0 then
    reason = 'insufficient_credits'
    if mflag then
      reason = 'member_limit_reached'
    elseif gflag then
      reason = 'group_limit_reached'
    end
  end
  return {
    reason = reason, drawn = true, per_kind = per_kind, mroom = mroom, groom = groom,
    lines = lines, nl = nl, group = group, pend_s = es, list = list, held = held,
  }
end

-- The flat reply of a check: reason|seat|personal|shared|on_demand|mroom|groom|period_end.
local function check_reply(c)
  if not c.drawn then return {c.reason} end
  local k = c.per_kind
  -- a sum over buckets can pass 2^53 (inexactly, but never below it): at least MAX_AMOUNT
  for kind, v in pairs(k) do
    if v > MAX_AMOUNT then k[kind] = MAX_AMOUNT end
  end
  return {
    c.reason or '', k.s == 0 and '0' or fmt(k.s), k.p == 0 and '0' or fmt(k.p),
    k.h == 0 and '0' or fmt(k.h), k.o == 0 and '0' or fmt(k.o),
    c.mroom and fmt(c.mroom) or '', c.groom and fmt(c.groom) or '', c.pend_s,
  }
end
