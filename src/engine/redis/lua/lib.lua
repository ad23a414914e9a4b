-- lib.lua: the shared part of the credit_sidecar Redis Function library (layout 4). The Rust
-- engine loads it once with FUNCTION LOAD: a header of constants generated from Rust
-- (BALANCE_MAX, RANK, CATCHUP_STEPS_MAX, PURGE_MAX, FORGET_MARKS, RES_BUCKET, REQUEST_KEY_LEN,
-- REQUEST_KEY_DIGITS — see
-- src/engine/redis/library.rs),
-- then this file, then one file per operation, each registering its function. Helpers are
-- compiled once, not on every call. It is the Lua port of src/ledger/account.rs and the skeleton
-- of src/ledger/model.rs; tests/it/differential.rs checks that the two agree on every answer.
--
-- KEYS (every account function, in this order; all share the shard's hash tag {sN}, so Redis
-- Cluster runs them unchanged):
--   1 A  cs:{sN}:a:<account>   hash    native scalar fields: avail held granted spent expired cs ce
--                                      gen pg ag lot res ev trial due wake [pp pa pc pd: the plan]
--                                      [qm: the time of F's last mark; absent while F is empty]
--                                      [owed: an outage charge's overdraft not yet repaid; absent
--                                      when never overdrawn, read as 0]
--                                      and c:<category> -> "budget,generation,used" per category
--                                      (as U's users; only read by name, so a sidecar that predates
--                                      category budgets never sees them)
--   2 L  cs:{sN}:l:<account>   hash    lots: m<id> -> "kind,granted,granted_ms,expires,from_plan",
--                                      r<id> -> remaining (a native integer)
--   3 B  cs:{sN}:b:<account>   zset    lots with credit left, in burn order: score expiry, member
--                                      <rank digit><16-digit id> (ties: kind order, then age)
--   4 E  cs:{sN}:e:<account>   zset    live lots by expiry (member: 16-digit id)
--   5 R  cs:{sN}:r:<account>   the prefix of the reservations' hashes, RES_BUCKET reservations
--        cs:{sN}:r:<account>/<n>  each (seq // RES_BUCKET = n): small hashes stay listpack-encoded,
--                                      a few bytes per field instead of a hash table entry.
--                                      m<seq> -> hot fields (see pack_res),
--                                      i<seq> -> "user\31category\31created\31opened_by\31labels"
--   6 D  cs:{sN}:d:<account>   zset    open reservations by deadline (member: 16-digit seq)
--   7 Q  cs:{sN}:q:<account>   hash    account-scoped request ids, each under its key (see
--                                      request_key) -> keep\31fingerprint\31answer, remembered
--                                      until `keep` (Unix ms): past it an entry is forgotten,
--                                      even before the sweep deletes it
--   8 P  cs:{sN}:p:<account>   zset    purge schedule: r<seq> (a closed reservation) scored by when
--                                      it goes, and one member q: when F's head next comes due
--   9 U  cs:{sN}:u:<account>   hash    user -> "limit,generation,used" (used counts only in
--                                      its generation: a renewal rewrites no user)
--  10 K  cs:{sN}:k:<account>   set     business keys charged this cycle (UNLINKed at renewal)
--  11 W  cs:{sN}:wake          zset    account -> a lower bound of when the sweep has work there
--  12 S  cs:{sN}:events        stream  the outbox: one entry per state change
--  13 F  cs:{sN}:f:<account>   list    Q's keys in the order they were remembered, for the sweep
--                                      to forget them in that order; a mark \31<time> (Unix ms)
--                                      before the ids remembered from that time on, at most one
--                                      per 1/FORGET_MARKS of the retention (see forget_later)
--  14 X  cs:{sN}:x:<account>:<seq> hash (Commit, Extend, Release only) answers to calls on the
--                                      reservation, by request id; deleted with it
-- ARGV (every account function): 1 account id   2 now (Unix ms) or "" for Redis TIME
--   3 retention ms   4.. the operation's own arguments (each file's header). A state change's
--   are: 4 its request id, 5 its stamp: the id's key (REQUEST_KEY_LEN characters, see
--   request_key) followed by the first 16 hex digits of the call's fingerprint.
--
-- Replies are flat arrays (no JSON): {"ok", ...} a result, {"no", reason, requested, available,
-- user_remaining|nil, held, state|nil, user|nil[, category, category_remaining][, <reservation
-- view>]} a decline (the category's two fields on category_budget_reached only; the view on
-- declines of Commit, Extend and Release: the reservation as it stands), {"err", code} an error, {"due"} "catch-up not
-- finished, call again" (each call does at most CATCHUP_STEPS_MAX steps of catching up). Numbers
-- are integers below 2^53: exact in Lua's doubles and in Redis's integer replies; redis.call
-- formats number arguments with %.17g, exactly. `false` in a reply is a nil bulk: "none".
--
-- Fast path: every state-changing call reads A once (HMGET) and compares A.due with now; only when
-- something is due does it catch up. All guards run before the first write; the body of an
-- operation decides in memory and writes once.

local K_A, K_L, K_B, K_E, K_R, K_D, K_Q, K_P, K_U, K_K, K_W, K_S, K_F, K_X
local ACCOUNT, NOW_ARG, RETENTION
local REQUEST

local ACCOUNT_KEYS = 13
local DAY = 86400000
local SEP = '\31'

-- The key under which Q and F keep an account-scoped request id: REQUEST_KEY_LEN characters,
-- each the URL-safe base64 digit of one of the first bytes of SHA-1(id) taken mod 64 (84 bits:
-- two ids of one account meet with a chance of about n^2 / 2^85 among n remembered at once).
-- A key costs the same however long the caller's ids are: 14 bytes where a UUID took 36, and
-- few enough that Redis keeps it with a 1-byte header in a 16-byte allocation. The engine
-- computes it in Rust for every call (keys.rs, request_key), which costs Redis nothing; the
-- Lua computes it only for a reservation's opening request (Extend) and in the upgrade from
-- layout 3. tests/it/layout.rs checks that the two agree.
-- (The table of digits is built at the first use: a library's top-level code runs without the
-- string library.)
local KEY_DIGIT = nil

local function request_key(id)
  if KEY_DIGIT == nil then
    KEY_DIGIT = {}
    for byte = 0, 255 do
      KEY_DIGIT[string.format('%02x', byte)] = string.sub(REQUEST_KEY_DIGITS, byte % 64 + 1, byte % 64 + 1)
    end
  end
  return (string.gsub(string.sub(redis.sha1hex(id), 1, 2 * REQUEST_KEY_LEN), '..', KEY_DIGIT))
end

local function bind(keys, args, key_count, arg_count, name)
  -- (The message is built only on failure: building it on every call costs more than the check.)
  if #keys ~= key_count or #args ~= arg_count then
    error(string.format('%s: expected %d keys and %d arguments, got %d and %d', name, key_count, arg_count, #keys, #args))
  end
  K_A, K_L, K_B, K_E, K_R, K_D, K_Q = keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7]
  K_P, K_U, K_K, K_W, K_S, K_F, K_X = keys[8], keys[9], keys[10], keys[11], keys[12], keys[13], keys[14]
  ACCOUNT, NOW_ARG, RETENTION = args[1], args[2], tonumber(args[3])
  REQUEST = nil
end

local function int(text)
  local n = tonumber(text)
  assert(n ~= nil and n == math.floor(n), 'not an integer argument')
  return n
end

local function opt_int(text)
  if text == '' then return nil end
  return int(text)
end

local function id16(n)
  return string.format('%016d', n)
end

-- Time and calendar (Howard Hinnant's civil-date algorithms) --------------------------------

local function now_ms()
  if NOW_ARG ~= '' then return int(NOW_ARG) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local MONTH_DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }
local function days_in_month(y, m)
  if m == 2 and (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then return 29 end
  return MONTH_DAYS[m]
end

-- `instant` plus `n` months (n may be negative), the day clamped to the month's last day.
local function add_months(instant, n)
  local days = math.floor(instant / DAY)
  local time_of_day = instant - days * DAY
  local y, m, d = civil_from_days(days)
  local total = y * 12 + (m - 1) + n
  local y2 = math.floor(total / 12)
  local m2 = total - y2 * 12 + 1
  return days_from_civil(y2, m2, math.min(d, days_in_month(y2, m2))) * DAY + time_of_day
end

-- The cycle [start, end) containing `now` for cycles of `step` months anchored at `anchor`.
local function cycle_containing(anchor, step, now)
  local ay, am = civil_from_days(math.floor(anchor / DAY))
  local ny, nm = civil_from_days(math.floor(now / DAY))
  local k = math.floor(((ny - ay) * 12 + nm - am) / step)
  while add_months(anchor, k * step) > now do k = k - 1 end
  while add_months(anchor, (k + 1) * step) <= now do k = k + 1 end
  return add_months(anchor, k * step), add_months(anchor, (k + 1) * step)
end

-- The account (A) -------------------------------------------------------------------------------

-- Every call reads the hot fields; the others (the cycle's end, plan, lot counter…) only when the
-- call needs them (cold): each field read costs a Lua string, and most calls need few.
local HOT = { 'avail', 'held', 'spent', 'expired', 'res', 'ev', 'due', 'wake', 'gen', 'cs', 'qm' }
local COLD = { 'granted', 'ce', 'pg', 'ag', 'lot', 'trial', 'owed', 'pp', 'pa', 'pc', 'pd' }
local COLD_SCALARS = 7
local SCALARS = { 'avail', 'held', 'spent', 'expired', 'res', 'ev', 'due', 'wake', 'gen', 'cs', 'qm', 'granted', 'ce',
  'pg', 'ag', 'lot', 'trial', 'owed' }

-- The account's hot fields, or nil when it does not exist. `a.loaded` keeps what was read, so
-- that save_account writes only the fields that changed.
local function load_account()
  local v = redis.call('HMGET', K_A, unpack(HOT))
  if not v[10] then return nil end
  local loaded = {}
  local a = { loaded = loaded, cold = false }
  for i = 1, #HOT do
    local n = tonumber(v[i])
    a[HOT[i]] = n
    loaded[HOT[i]] = n
  end
  return a
end

-- Reads the account's other fields, once.
local function cold(a)
  if a.cold then return end
  a.cold = true
  local v = redis.call('HMGET', K_A, unpack(COLD))
  for i = 1, COLD_SCALARS do
    local n = tonumber(v[i])
    a[COLD[i]] = n
    a.loaded[COLD[i]] = n
  end
  -- Absent until the account first overdraws.
  if a.owed == nil then
    a.owed = 0
    a.loaded.owed = 0
  end
  if v[8] then
    a.plan = { period = tonumber(v[8]), anchor = tonumber(v[9]), plan = tonumber(v[10]), addon = tonumber(v[11]) }
  end
end

local function new_account(now)
  local cs, ce = cycle_containing(0, 1, now)
  -- Written by save_account only: a call that fails its checks leaves no trace.
  return { loaded = { owed = 0 }, cold = true, created = true, avail = 0, held = 0, granted = 0, spent = 0, expired = 0,
    cs = cs, ce = ce, gen = 0, pg = 0, ag = 0, lot = 0, res = 0, ev = 0, trial = 0, owed = 0, due = ce, wake = ce }
end

local function save_account(a)
  local changes = {}
  for i = 1, #SCALARS do
    local f = SCALARS[i]
    if a[f] ~= a.loaded[f] then
      changes[#changes + 1] = f
      changes[#changes + 1] = a[f]
      a.loaded[f] = a[f]
    end
  end
  -- Categories changed by this call (put_category), in the same write.
  if a.cats then
    for field, value in pairs(a.cats) do
      changes[#changes + 1] = field
      changes[#changes + 1] = value
    end
    a.cats = nil
  end
  if #changes > 0 then redis.call('HSET', K_A, unpack(changes)) end
  if a.created then
    a.created = false
    redis.call('ZADD', K_W, a.wake, ACCOUNT)
  end
end

local function save_plan(a)
  local p = a.plan
  redis.call('HSET', K_A, 'pp', p.period, 'pa', p.anchor, 'pc', p.plan, 'pd', p.addon)
end

-- The sweep must visit the account by `at`: lowers its wake-up time when needed.
local function wake_by(a, at)
  if at < a.wake then
    a.wake = at
    if not a.created then redis.call('ZADD', K_W, at, ACCOUNT) end
  end
end

-- Something due (lot expiry, hold deadline, renewal) may come no earlier than `at`.
local function due_by(a, at)
  if at < a.due then a.due = at end
  wake_by(a, at)
end

local function totals(a)
  cold(a)
  return a.granted, a.avail, a.held, a.spent, a.expired, a.owed
end

-- Events: the outbox, appended in the same atomic step as the change they record. `data` is
-- the event's JSON (src/ledger/wire.rs decodes it).
local function emit(a, at, kind, data)
  a.ev = a.ev + 1
  redis.call('XADD', K_S, '*', 'account', ACCOUNT, 'seq', a.ev, 'at', at, 'request', REQUEST or '', 'kind', kind,
    'data', data)
end

local function json_draws(draws)
  local parts = {}
  for i, d in ipairs(draws) do parts[i] = string.format('[%d,%d]', d[1], d[2]) end
  return '[' .. table.concat(parts, ',') .. ']'
end

-- Users (U) ---------------------------------------------------------------------------------------

-- Usage "limit,generation,used" (used counts only in its generation: a renewal rewrites none).
local function parse_usage(a, text)
  if not text then return nil end
  local limit, gen, used = string.match(text, '^(%d*),(%d+),(%-?%d+)$')
  local u = { limit = opt_int(limit), used = tonumber(used) }
  if tonumber(gen) ~= a.gen then u.used = 0 end
  return u
end

local function format_usage(a, u)
  return string.format('%s,%d,%d', u.limit and string.format('%d', u.limit) or '', a.gen, u.used)
end

-- A user's limit (nil: none) and what they used this cycle, or nil when never seen.
local function get_user(a, user)
  return parse_usage(a, redis.call('HGET', K_U, user))
end

local function put_user(a, user, u)
  redis.call('HSET', K_U, user, format_usage(a, u))
end

-- A category's budget (`limit`; nil: none) and what it used this cycle, or nil when never seen.
-- A change waits in a.cats until save_account writes it with the account's other fields (one
-- HSET per call); reads see it meanwhile.
local function get_category(a, category)
  local field = 'c:' .. category
  return parse_usage(a, a.cats and a.cats[field] or redis.call('HGET', K_A, field))
end

local function put_category(a, category, c)
  a.cats = a.cats or {}
  a.cats['c:' .. category] = format_usage(a, c)
end

local function remaining_of(u)
  if u == nil or u.limit == nil then return nil end
  return math.max(0, u.limit - u.used)
end

-- Reply fields: user, limit|false, used, remaining|false.
local function user_fields(out, user, u)
  u = u or { used = 0 }
  local remaining = remaining_of(u)
  out[#out + 1] = user
  out[#out + 1] = u.limit or false
  out[#out + 1] = u.used
  out[#out + 1] = remaining or false
end

-- Reservations (R) --------------------------------------------------------------------------------

-- m<seq>: "state,reserved,committed,commits,deadline,returned,closed,ugen,ucnt,draws" with draws
-- "lot:amount;lot:amount" (what is still held, in burn order) and closed empty while open.
local function pack_res(r)
  local parts = {}
  for i, d in ipairs(r.draws) do parts[i] = string.format('%d:%d', d[1], d[2]) end
  return string.format('%s,%d,%d,%d,%d,%d,%s,%d,%d,%s', r.state, r.reserved, r.committed, r.commits, r.deadline,
    r.returned, r.closed and string.format('%d', r.closed) or '', r.ugen, r.ucnt, table.concat(parts, ';'))
end

local function unpack_res(seq, text)
  local state, reserved, committed, commits, deadline, returned, closed, ugen, ucnt, draws =
    string.match(text, '^(%a+),(%d+),(%d+),(%d+),(%d+),(%d+),(%d*),(%d+),(%d+),(.*)$')
  local r = { seq = seq, state = state, reserved = tonumber(reserved), committed = tonumber(committed),
    commits = tonumber(commits), deadline = tonumber(deadline), returned = tonumber(returned),
    closed = opt_int(closed), ugen = tonumber(ugen), ucnt = tonumber(ucnt), draws = {} }
  for lot, amount in string.gmatch(draws, '(%d+):(%d+)') do
    r.draws[#r.draws + 1] = { tonumber(lot), tonumber(amount) }
  end
  return r
end

-- The hash holding reservation `seq` ('/' cannot occur in an account id: no two accounts' keys
-- can meet).
local function res_key(seq)
  return K_R .. '/' .. math.floor(seq / RES_BUCKET)
end

-- The reservation's hot fields and its fixed facts (user, category, created, opened_by,
-- labels JSON), or nil.
local function get_res(seq)
  local v = redis.call('HMGET', res_key(seq), 'm' .. seq, 'i' .. seq)
  if not v[1] then return nil end
  local r = unpack_res(seq, v[1])
  local user, category, created, opened_by, labels = string.match(v[2], '^([^\31]*)\31([^\31]*)\31(%d+)\31([^\31]*)\31(.*)$')
  r.user, r.category, r.created, r.labels = user, category, tonumber(created), labels
  if opened_by ~= '' then r.opened_by = opened_by end
  return r
end

local function put_res(r)
  redis.call('HSET', res_key(r.seq), 'm' .. r.seq, pack_res(r))
end

local function held_of(r)
  local sum = 0
  for _, d in ipairs(r.draws) do sum = sum + d[2] end
  return sum
end

-- Reply fields of a reservation view: seq, state, reserved, committed, held, returned, commits,
-- deadline, closed|false (then, added by view_facts, user, category, created, labels).
local function view_fields(out, r)
  local fields = { r.seq, r.state, r.reserved, r.committed, held_of(r), r.returned, r.commits, r.deadline,
    r.closed or false }
  for _, f in ipairs(fields) do out[#out + 1] = f end
end

local function view_facts(out, r)
  out[#out + 1] = r.user
  out[#out + 1] = r.category
  out[#out + 1] = r.created
  out[#out + 1] = r.labels
end

-- Lots (L, B, E) ------------------------------------------------------------------------------------

local function burn_member(kind, id)
  return string.format('%d%016d', RANK[kind], id)
end

local function grant(a, kind, amount, at, expires, from_plan)
  cold(a)
  a.lot = a.lot + 1
  local id = a.lot
  -- An overdraft is repaid first, from the new lot: it starts with the rest.
  local repaid = math.min(amount, a.owed)
  local remaining = amount - repaid
  redis.call('HSET', K_L, 'm' .. id, string.format('%s,%d,%d,%d,%d', kind, amount, at, expires, from_plan and 1 or 0),
    'r' .. id, remaining)
  redis.call('ZADD', K_E, expires, id16(id))
  if remaining > 0 then redis.call('ZADD', K_B, expires, burn_member(kind, id)) end
  a.avail = a.avail + remaining
  a.granted = a.granted + amount
  a.owed = a.owed - repaid
  due_by(a, expires)
  emit(a, at, 'lot_granted', string.format('{"lot":%d,"kind":"%s","amount":%d,"expires":%d,"from_plan":%s}', id, kind,
    amount, expires, from_plan and 'true' or 'false'))
  if repaid > 0 then emit(a, at, 'repaid', string.format('{"lot":%d,"amount":%d}', id, repaid)) end
  return id
end

local function lot_meta(text)
  local kind, granted, granted_ms, expires, from_plan = string.match(text, '^(%a+),(%d+),(%d+),(%d+),(%d)$')
  return { kind = kind, granted = tonumber(granted), granted_ms = tonumber(granted_ms), expires = tonumber(expires),
    from_plan = from_plan == '1' }
end

-- Takes `amount` (admitted: the lots cover it) from the lots in burn order, reading only the lots
-- it draws from. Returns the draws {{lot, amount}, ...}.
local function draw(a, amount)
  local draws, updates, drained = {}, {}, {}
  local left, start = amount, 0
  while left > 0 do
    local members = redis.call('ZRANGE', K_B, start, start + 3)
    assert(#members > 0, 'draw beyond the available credit')
    local fields = {}
    for i, member in ipairs(members) do fields[i] = 'r' .. tonumber(string.sub(member, 2)) end
    local remaining = redis.call('HMGET', K_L, unpack(fields))
    for i, member in ipairs(members) do
      if left == 0 then break end
      local have = tonumber(remaining[i])
      local take = math.min(left, have)
      left = left - take
      draws[#draws + 1] = { tonumber(string.sub(member, 2)), take }
      updates[#updates + 1] = fields[i]
      updates[#updates + 1] = have - take
      if have == take then drained[#drained + 1] = member end
    end
    start = start + 4
  end
  redis.call('HSET', K_L, unpack(updates))
  if #drained > 0 then redis.call('ZREM', K_B, unpack(drained)) end
  a.avail = a.avail - amount
  return draws
end

-- Gives `draws` back to the lots still live (a lot expired at or before the close instant is gone
-- from L: catch-up runs in time order). Returns (returned draws, amount that counts as expired).
local function give_back(a, draws)
  if #draws == 0 then return {}, 0 end
  local fields = {}
  for _, d in ipairs(draws) do
    fields[#fields + 1] = 'r' .. d[1]
    fields[#fields + 1] = 'm' .. d[1]
  end
  local v = redis.call('HMGET', K_L, unpack(fields))
  local returned, expired, updates = {}, 0, {}
  for i, d in ipairs(draws) do
    local have = tonumber(v[2 * i - 1])
    if have then
      updates[#updates + 1] = 'r' .. d[1]
      updates[#updates + 1] = have + d[2]
      if have == 0 then
        local lot = lot_meta(v[2 * i])
        redis.call('ZADD', K_B, lot.expires, burn_member(lot.kind, d[1]))
      end
      returned[#returned + 1] = d
      a.avail = a.avail + d[2]
    else
      expired = expired + d[2]
    end
  end
  if #updates > 0 then redis.call('HSET', K_L, unpack(updates)) end
  return returned, expired
end

local function expire_lot(a, id, at)
  local v = redis.call('HMGET', K_L, 'r' .. id, 'm' .. id)
  local remaining, lot = tonumber(v[1]), lot_meta(v[2])
  redis.call('HDEL', K_L, 'r' .. id, 'm' .. id)
  redis.call('ZREM', K_E, id16(id))
  if remaining > 0 then redis.call('ZREM', K_B, burn_member(lot.kind, id)) end
  a.avail = a.avail - remaining
  a.expired = a.expired + remaining
  emit(a, at, 'lot_expired', string.format('{"lot":%d,"amount":%d}', id, remaining))
end

-- User usage (src/ledger/account.rs count_usage / uncount_usage) ----------------------------------

-- The user's and the category's usage move together: what a reservation counted, both counted.
-- `u`, `c`: its user's and category's state as admit read them (nil: read them here).
local function count_usage(a, r, amount, u, c)
  if r.ugen ~= a.gen then
    r.ugen = a.gen
    r.ucnt = 0
  end
  r.ucnt = r.ucnt + amount
  u = u or get_user(a, r.user) or { used = 0 }
  u.used = u.used + amount
  put_user(a, r.user, u)
  c = c or get_category(a, r.category) or { used = 0 }
  c.used = c.used + amount
  put_category(a, r.category, c)
end

local function uncount_usage(a, r, returned)
  if r.ugen ~= a.gen then return end
  local back = math.min(returned, r.ucnt)
  r.ucnt = r.ucnt - back
  if back == 0 then return end
  local u = get_user(a, r.user)
  if u then
    u.used = u.used - back
    put_user(a, r.user, u)
  end
  -- Clamped as Account::uncount_usage does (a hold older than category budgets).
  local c = get_category(a, r.category)
  if c then
    c.used = math.max(0, c.used - back)
    put_category(a, r.category, c)
  end
end

-- Closes an open reservation at `at` (now, or its deadline when it expired): what it still holds
-- goes back to its lots if they were alive at that instant, otherwise to expired. Writes it.
-- Returns the amount released.
local function close(a, r, state, at)
  local total = held_of(r)
  local returned, expired = give_back(a, r.draws)
  r.draws = {}
  r.state = state
  r.returned = total
  r.closed = at
  uncount_usage(a, r, total)
  put_res(r)
  redis.call('ZREM', K_D, id16(r.seq))
  redis.call('ZADD', K_P, at + RETENTION, 'r' .. r.seq)
  wake_by(a, at + RETENTION)
  a.held = a.held - total
  a.expired = a.expired + expired
  emit(a, at, 'closed', string.format('{"res":%d,"state":"%s","returned":%s,"expired":%d}', r.seq, state,
    json_draws(returned), expired))
  return total
end

-- Cycles ------------------------------------------------------------------------------------------

local function grant_plan_lots(a, plan_credits, addon_credits, at)
  cold(a)
  a.pg = a.pg + plan_credits
  a.ag = a.ag + addon_credits
  if plan_credits > 0 then grant(a, 'plan', plan_credits, at, a.ce, true) end
  if addon_credits > 0 then grant(a, 'addon', addon_credits, at, a.ce, true) end
end

-- Begins a cycle: user usage (by generation) and business keys reset, the plan's lots granted.
local function start_cycle(a, cs, ce)
  cold(a)
  a.cs, a.ce = cs, ce
  a.gen = a.gen + 1
  a.pg, a.ag = 0, 0
  redis.call('UNLINK', K_K)
  due_by(a, ce)
  emit(a, cs, 'cycle_started', string.format('{"cs":%d,"ce":%d}', cs, ce))
  if a.plan then grant_plan_lots(a, a.plan.plan, a.plan.addon, cs) end
end

local function first_score(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first == 0 then return nil, nil end
  return tonumber(first[2]), first[1]
end

-- Brings the account up to `now` by replaying what time did, in time order: lots expire at their
-- expiry, holds at their deadline, cycles renew at their end (every cycle that began). At one
-- instant lots go first (lowest id first), then holds (lowest seq first), then the renewal. At
-- most CATCHUP_STEPS_MAX steps: returns true when done (a.due is then exact), false when the
-- caller must come back for the rest. Idempotent.
local function catch_up(a, now)
  cold(a)
  for _ = 1, CATCHUP_STEPS_MAX do
    local lot_at, lot_id = first_score(K_E)
    local hold_at, hold_seq = first_score(K_D)
    local at, due = a.ce, 'renewal'
    if hold_at and hold_at <= at then at, due = hold_at, 'hold' end
    if lot_at and lot_at <= at then at, due = lot_at, 'lot' end
    if at > now then
      a.due = at
      return true
    end
    if due == 'lot' then
      expire_lot(a, tonumber(lot_id), at)
    elseif due == 'hold' then
      close(a, get_res(tonumber(hold_seq)), 'expired', at)
    else
      local cs, ce
      if a.plan then
        cs, ce = cycle_containing(a.plan.anchor, a.plan.period, at)
      else
        cs, ce = cycle_containing(0, 1, at)
      end
      start_cycle(a, cs, ce)
    end
  end
  return false
end

-- The operation skeleton (Ledger::run in src/ledger/model.rs) ---------------------------------------

local function err(code)
  return { 'err', code }
end

-- A decline; `user`: whose limit was checked (nil for a trial). A category_budget_reached
-- decline carries the category and its remaining budget next (before any reservation view).
local function decline(reason, requested, available, remaining, held, state, user)
  return { 'no', reason, requested, available, remaining or false, held or 0, state or false, user or false }
end

-- The length of a decline that carries a reservation view (without its facts): 'no', 7 fields,
-- 9 view fields. Declines remembered before declines carried a view are shorter.
local DECLINE_WITH_VIEW = 17

-- Adds reservation `r`, as it stands, to a decline of a call on it.
local function with_view(declined, r)
  view_fields(declined, r)
  return declined
end

-- The checks every new hold passes, in order: the account's credit, the user's limit, then the
-- category's budget. Returns (decline or nil, the user's and the category's state for
-- count_usage).
local function admit(a, user, category, amount)
  local u = get_user(a, user) or { used = 0 }
  local remaining = remaining_of(u)
  if a.avail < amount then return decline('insufficient_credit', amount, a.avail, remaining, 0, nil, user), u end
  if remaining ~= nil and remaining < amount then
    return decline('user_limit_reached', amount, a.avail, remaining, 0, nil, user), u
  end
  local c = get_category(a, category) or { used = 0 }
  local budget_left = remaining_of(c)
  if budget_left ~= nil and budget_left < amount then
    local declined = decline('category_budget_reached', amount, a.avail, remaining, 0, nil, user)
    declined[#declined + 1] = category
    declined[#declined + 1] = budget_left
    return declined, u, c
  end
  return nil, u, c
end

-- floor(n / d) exactly, for 0 <= n < 2^53 and d >= 1 (the double quotient can round up to the
-- next integer when it lies just below it).
local function idiv(n, d)
  local q = math.floor(n / d)
  if q * d > n then return q - 1 end
  if (q + 1) * d <= n then return q + 1 end
  return q
end

-- What a hold of `amount` for `user` in `category` asks for (Account::hold_amount): the whole
-- amount, or for a partial hold (`unit` credits a unit, at least `min_units`) as many whole units
-- as the available credit, the user's limit and the category's budget leave room for, capped at `amount`; the
-- minimum when not even that fits (admit then declines it, naming the scope short of room).
local function hold_amount(a, user, category, amount, unit, min_units)
  if not unit then return amount end
  local room = a.avail
  local remaining = remaining_of(get_user(a, user))
  if remaining ~= nil and remaining < room then room = remaining end
  local budget_left = remaining_of(get_category(a, category))
  if budget_left ~= nil and budget_left < room then room = budget_left end
  local units = math.min(idiv(math.max(room, 0), unit), idiv(amount, unit))
  return math.max(units, min_units) * unit
end

local function reservation_decline(a, r, reason, requested)
  local declined = decline(reason, requested, a.avail, remaining_of(get_user(a, r.user)), held_of(r), r.state, r.user)
  return with_view(declined, r)
end

-- Declines a call on a reservation that is no longer open.
local function closed_decline(a, r, requested)
  if r.state == 'held' then return nil end
  local reason = r.state == 'expired' and 'reservation_expired' or 'reservation_closed'
  return reservation_decline(a, r, reason, requested)
end

local function check_balance(a, amount)
  return a.avail + a.held + amount <= BALANCE_MAX
end

-- Remembered answers: fingerprint, then the reply's fields joined by \31 ('' for false). A reply
-- about a reservation is kept without its fixed facts (user, category, created, labels): they are
-- added back from the reservation itself, so a remembered answer stays small.
local function pack_answer(fingerprint, reply)
  local parts = { fingerprint }
  for i, v in ipairs(reply) do
    if type(v) == 'number' then
      parts[i + 1] = string.format('%d', v)
    elseif v == false then
      parts[i + 1] = ''
    else
      parts[i + 1] = v
    end
  end
  return table.concat(parts, SEP)
end

local function unpack_answer(text)
  local out, start = {}, 1
  while true do
    local stop = string.find(text, SEP, start, true)
    local part = string.sub(text, start, (stop or 0) - 1)
    if part == '' then part = false end
    out[#out + 1] = part
    if not stop then return out end
    start = stop + 1
  end
end

-- Whether a reply about a reservation ends with its view (then its facts are added back).
local function has_view(reply)
  return reply[1] == 'ok' or (reply[1] == 'no' and #reply >= DECLINE_WITH_VIEW)
end

-- Remembered account-scoped answers (Q): `keep\31fingerprint\31answer`. An entry past its keep
-- is forgotten from that instant (Account::purge, Ledger::run), whenever the sweep gets to
-- delete it: returns `fingerprint\31answer`, or nil when forgotten.
-- The keep (Unix ms) of a remembered account-scoped answer; nil for one written without it, as
-- layout 2 wrote them (no layout-4 call looks up what a layout-2 sidecar run against this
-- layout would leave, under the id itself; should such an answer sit under a key, it is treated
-- as forgotten rather than failing every call that finds it).
local function keep_of(remembered)
  local at = string.find(remembered, SEP, 1, true)
  return at and tonumber(string.sub(remembered, 1, at - 1))
end

local function unexpired(remembered, now)
  local keep = keep_of(remembered)
  if keep == nil or keep <= now then return nil end
  return string.sub(remembered, string.find(remembered, SEP, 1, true) + 1)
end

-- Appends ids remembered at `at` to F (enqueue: true when F had no mark yet, so its head needs
-- scheduling), and queues `key`, a request id's just remembered in Q, for the sweep to forget
-- (forget_later). F keeps Q's ids (their keys) in the order they were remembered, so they come due roughly
-- in that order: an id remembered at t is kept at least until t + retention. A mark \31<t> goes before the ids remembered from t on whenever
-- the last one is 1/FORGET_MARKS of the retention old, so the sweep knows when the ids behind
-- each mark may come due: an id remembered at or after t comes due no sooner than t + retention.
-- (An id the sweep queues again, kept longer than its chunk, joins the last chunk: it may then
-- stay in memory up to about a retention past its keep, forgotten all the same.) An id costs its own bytes in F's listpack, where a purge-schedule
-- entry per id (layout 2) cost as much memory as the id's answer; P holds one member, q: when
-- F's head next comes due. (Passing over all of Q instead, HSCAN by HSCAN, saves F's bytes but
-- reads every id at every pass: 15-27 us of Redis per id forgotten, measured, against ~4 here.)
local function enqueue(a, at, ...)
  local first = a.qm == nil
  if first or at - a.qm >= math.floor(RETENTION / FORGET_MARKS) then
    redis.call('RPUSH', K_F, SEP .. string.format('%d', at), ...)
    a.qm = at
  else
    redis.call('RPUSH', K_F, ...)
  end
  return first
end

local function forget_later(a, key, now)
  if enqueue(a, now, key) then
    redis.call('ZADD', K_P, 'LT', now + RETENTION, 'q')
    wake_by(a, now + RETENTION)
  end
end

-- Brings the account up to now; false when the caller must call again (catch-up not finished).
local function current(a, now)
  if a.due > now then return true end
  local done = catch_up(a, now)
  if not done then save_account(a) end
  return done
end

-- Runs `body(a, now, r)` idempotently. opts.request: the request id; opts.stamp: its key and
-- the call's fingerprint (ARGV 5, see the header); opts.create: may create the account;
-- opts.seq: the reservation acted on, whose own hash (X) remembers the answer by request id as
-- long as the reservation is kept (its reply ends with its facts); other answers go to Q under
-- the id's key, forgotten after retention (opts.keep(answer, now): until when). `body` returns
-- (reply, error code) and checks everything before it writes.
local function run(opts, body)
  local now = now_ms()
  local a = load_account()
  local created = false
  if a == nil then
    if not opts.create then return err('account_not_found') end
    a = new_account(now)
    created = true
  elseif not current(a, now) then
    return { 'due' }
  end
  local r = nil
  if opts.seq then
    r = get_res(opts.seq)
    if r == nil then
      save_account(a)
      return err('reservation_not_found')
    end
  end
  local fingerprint = string.sub(opts.stamp, REQUEST_KEY_LEN + 1)
  local qkey, field = K_Q, string.sub(opts.stamp, 1, REQUEST_KEY_LEN)
  if opts.seq then qkey, field = K_X, opts.request end
  local remembered = (not created) and redis.call('HGET', qkey, field)
  if remembered and not opts.seq then remembered = unexpired(remembered, now) end
  if remembered then
    save_account(a)
    if string.sub(remembered, 1, #fingerprint + 1) ~= fingerprint .. SEP then
      return err('request_id_reused')
    end
    local reply = unpack_answer(string.sub(remembered, #fingerprint + 2))
    if opts.seq and has_view(reply) then view_facts(reply, r) end
    return reply
  end
  REQUEST = opts.request
  local reply, code = body(a, now, r)
  if code then
    if not created then save_account(a) end
    return err(code)
  end
  if opts.seq then
    redis.call('HSET', qkey, field, pack_answer(fingerprint, reply))
    if has_view(reply) then view_facts(reply, r) end
  else
    local keep = (opts.keep and opts.keep(reply, now) or now) + RETENTION
    local fresh = redis.call('HSET', qkey, field, string.format('%d', keep) .. SEP .. pack_answer(fingerprint, reply))
    -- (An id remembered again after it was forgotten is still queued where it was: the sweep
    -- finds it kept longer there and queues it again.)
    if fresh == 1 then forget_later(a, field, now) end
  end
  save_account(a)
  return reply
end

-- Reads (no writes; registered no-writes, called with FCALL_RO): the account as of now, or
-- {"due"} when something must be caught up first (the engine then calls catch_up and reads
-- again), or an error when it does not exist.
local function read(body)
  local now = now_ms()
  local a = load_account()
  if a == nil then return err('account_not_found') end
  if a.due <= now then return { 'due' } end
  return body(a, now)
end

-- Opens a reservation holding `amount` (admitted; `u` is its user as admit read it) and returns it.
local function open_reservation(a, now, deadline, amount, user, category, labels, u, c)
  local draws = draw(a, amount)
  a.res = a.res + 1
  local r = { seq = a.res, user = user, category = category, state = 'held', reserved = amount, committed = 0,
    draws = draws, returned = 0, commits = 0, created = now, deadline = deadline, labels = labels,
    opened_by = REQUEST, ugen = a.gen, ucnt = 0 }
  a.held = a.held + amount
  count_usage(a, r, amount, u, c)
  redis.call('HSET', res_key(r.seq), 'm' .. r.seq, pack_res(r), 'i' .. r.seq,
    table.concat({ user, category, string.format('%d', now), REQUEST or '', labels }, SEP))
  if deadline > now then
    redis.call('ZADD', K_D, deadline, id16(r.seq))
    due_by(a, deadline)
  end
  emit(a, now, 'reserved', string.format('{"res":%d,"user":%s,"category":%s,"amount":%d,"draws":%s,"deadline":%d,"labels":%s}',
    r.seq, cjson.encode(user), cjson.encode(category), amount, json_draws(draws), deadline, labels))
  return r
end

-- Moves `amount` (checked against the hold) from held to spent, from the first draws first.
-- Writes the reservation unless `defer` (the caller closes it next and writes it then).
local function spend(a, now, r, amount, key, already, labels)
  local left = amount
  local taken, kept = {}, {}
  for _, d in ipairs(r.draws) do
    local take = math.min(left, d[2])
    if take > 0 then
      taken[#taken + 1] = { d[1], take }
      left = left - take
    end
    if d[2] - take > 0 then kept[#kept + 1] = { d[1], d[2] - take } end
  end
  r.draws = kept
  r.committed = r.committed + amount
  r.commits = r.commits + 1
  a.held = a.held - amount
  a.spent = a.spent + amount
  if key and not already then redis.call('SADD', K_K, key) end
  local key_json = key and (',"key":' .. cjson.encode(key)) or ''
  emit(a, now, 'committed', string.format('{"res":%d,"user":%s,"category":%s,"cycle":%d,"amount":%d,"draws":%s%s,"already":%s,"labels":%s}',
    r.seq, cjson.encode(r.user), cjson.encode(r.category), a.cs, amount, json_draws(taken), key_json,
    already and 'true' or 'false', labels))
end

local function key_charged(key)
  return key ~= nil and redis.call('SISMEMBER', K_K, key) == 1
end

-- Spends `amount` that no lot covers (an outage charge's overdraft; Account::overdraw): the
-- account owes it, and it counts for the user and the category this cycle like a commit.
-- `res`: the charge's reservation (0 when the lots covered none of it).
local function overdraw(a, now, res, user, category, amount, key, labels)
  cold(a)
  a.owed = a.owed + amount
  a.spent = a.spent + amount
  local u = get_user(a, user) or { used = 0 }
  u.used = u.used + amount
  put_user(a, user, u)
  local c = get_category(a, category) or { used = 0 }
  c.used = c.used + amount
  put_category(a, category, c)
  if key then redis.call('SADD', K_K, key) end
  local key_json = key and (',"key":' .. cjson.encode(key)) or ''
  emit(a, now, 'overdrawn', string.format('{"res":%d,"user":%s,"category":%s,"cycle":%d,"amount":%d%s,"labels":%s}',
    res, cjson.encode(user), cjson.encode(category), a.cs, amount, key_json, labels))
end

-- Reply fields of the totals: granted, available, held, spent, expired, owed.
local function totals_fields(out, a)
  local granted, available, held, spent, expired, owed = totals(a)
  for _, v in ipairs({ granted, available, held, spent, expired, owed }) do out[#out + 1] = v end
  return out
end

-- Registers an account function: `name` prefixed with this library's version (FN_PREFIX, from the
-- header), so sidecars of different versions can share one Redis during a rolling upgrade.
local function register(name, callback, read_only)
  local flags = {}
  if read_only then flags = { 'no-writes' } end
  redis.register_function { function_name = FN_PREFIX .. name, callback = callback, flags = flags }
end
