-- lib.lua: the shared prelude of every account script (prepended to each at build time). It is
-- the Lua port of src/ledger/account.rs and the skeleton of src/ledger/model.rs; the two must
-- agree on every answer (tests/it/differential.rs checks it on random operation sequences).
--
-- KEYS (every account script; all share the shard's hash tag {sN}, so Redis Cluster runs them
-- unchanged):
--   1 A  cs:{sN}:a:<account>   hash   scalar state; `lots` and `plan` as JSON
--   2 R  cs:{sN}:r:<account>   hash   reservation seq (20-digit) -> JSON
--   3 D  cs:{sN}:d:<account>   zset   open reservations: seq (20-digit) scored by deadline
--   4 Q  cs:{sN}:q:<account>   hash   request id -> fingerprint|answer JSON
--   5 U  cs:{sN}:u:<account>   hash   user -> JSON {limit?, used}
--   6 K  cs:{sN}:k:<account>   set    business keys charged this cycle
--   7 P  cs:{sN}:p:<account>   zset   purge schedule: "r:<seq>" / "q:<request id>" scored by when
--   8 W  cs:{sN}:wake          zset   account -> when it next needs the sweep
--   9 E  cs:{sN}:events        stream the outbox: one entry per state change
--  10 X  cs:{sN}:x:<account>:<seq>  hash  (Commit, Extend, Release only) answers to calls on
--                                 reservation <seq> by request id; deleted with the reservation
-- ARGV (every account script):
--   1 account id   2 now (Unix ms) or "" for Redis TIME   3 retention ms
--   4 the operation's arguments as JSON   5 its fingerprint (state-changing operations)
--
-- Numbers: every figure is an integer below 2^53, exact in Lua's doubles. cjson.encode prints
-- only 14 significant digits, so replies and stored JSON are written by `enc` below, which
-- prints integers with %.0f. cjson.decode reads them back exactly.

local K_A, K_R, K_D, K_Q, K_U, K_K, K_P, K_W, K_E = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
  KEYS[8], KEYS[9]
local ACCOUNT = ARGV[1]
local RETENTION = tonumber(ARGV[3])
local ARGS = cjson.decode(ARGV[4])
local FINGERPRINT = ARGV[5]

local DAY = 86400000
local RANK = { trial = 0, promo = 1, plan = 2, addon = 3, adjustment = 4 }
local BALANCE_MAX = 10000000000000

-- JSON --------------------------------------------------------------------------------------

local ARRAY = {}
local function arr(t)
  return setmetatable(t or {}, ARRAY)
end

local function enc(v)
  local t = type(v)
  if t == 'number' then
    return string.format('%.0f', v)
  elseif t == 'string' then
    return cjson.encode(v)
  elseif t == 'boolean' then
    return v and 'true' or 'false'
  elseif t == 'table' then
    local parts = {}
    if getmetatable(v) == ARRAY then
      for i = 1, #v do parts[i] = enc(v[i]) end
      return '[' .. table.concat(parts, ',') .. ']'
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ':' .. enc(v[k]) end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return 'null'
end

local function pairs_list(list)
  local out = arr()
  for _, p in ipairs(list) do out[#out + 1] = arr({ p[1], p[2] }) end
  return out
end

-- Time and calendar (Howard Hinnant's civil-date algorithms) --------------------------------

local function now_ms()
  if ARGV[2] ~= '' then return tonumber(ARGV[2]) end
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

-- State ---------------------------------------------------------------------------------------

local function seq_key(seq)
  return string.format('%020.0f', seq)
end

local function decode_lots(text)
  local lots = {}
  for _, l in ipairs(cjson.decode(text or '[]')) do lots[l.id] = l end
  return lots
end

local function load_account()
  local flat = redis.call('HGETALL', K_A)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return {
    plan = h.plan and cjson.decode(h.plan) or nil,
    cs = tonumber(h.cs), ce = tonumber(h.ce), gen = tonumber(h.gen), pg = tonumber(h.pg), ag = tonumber(h.ag),
    lots = decode_lots(h.lots),
    last_lot = tonumber(h.last_lot), last_res = tonumber(h.last_res), last_event = tonumber(h.last_event),
    trial = h.trial == '1',
    granted = tonumber(h.granted), held = tonumber(h.held), spent = tonumber(h.spent), expired = tonumber(h.expired),
  }
end

local function new_account(now)
  local cs, ce = cycle_containing(0, 1, now)
  return {
    cs = cs, ce = ce, gen = 0, pg = 0, ag = 0, lots = {}, last_lot = 0, last_res = 0, last_event = 0, trial = false,
    granted = 0, held = 0, spent = 0, expired = 0,
  }
end

local function sorted_lot_ids(a)
  local ids = {}
  for id in pairs(a.lots) do ids[#ids + 1] = id end
  table.sort(ids)
  return ids
end

-- Writes the account hash and its wake-up time (the earliest instant the sweep has work here).
local function save_account(a)
  local lots = arr()
  local wake = a.ce
  for _, id in ipairs(sorted_lot_ids(a)) do
    lots[#lots + 1] = a.lots[id]
    wake = math.min(wake, a.lots[id].expires)
  end
  redis.call('HSET', K_A, 'cs', enc(a.cs), 'ce', enc(a.ce), 'gen', enc(a.gen), 'pg', enc(a.pg), 'ag', enc(a.ag),
    'lots', enc(lots),
    'last_lot', enc(a.last_lot), 'last_res', enc(a.last_res), 'last_event', enc(a.last_event),
    'trial', a.trial and '1' or '0', 'granted', enc(a.granted), 'held', enc(a.held), 'spent', enc(a.spent),
    'expired', enc(a.expired))
  if a.plan then redis.call('HSET', K_A, 'plan', enc(a.plan)) end
  for _, key in ipairs({ K_D, K_P }) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first > 0 then wake = math.min(wake, tonumber(first[2])) end
  end
  redis.call('ZADD', K_W, enc(wake), ACCOUNT)
end

local function available(a)
  local sum = 0
  for _, lot in pairs(a.lots) do sum = sum + lot.remaining end
  return sum
end

local function totals(a)
  return { granted = a.granted, available = available(a), held = a.held, spent = a.spent, expired = a.expired }
end

local RES = {}
local function get_res(seq)
  if RES[seq] == nil then
    local text = redis.call('HGET', K_R, seq_key(seq))
    if not text then return nil end
    local r = cjson.decode(text)
    r.draws = arr(r.draws)
    for i, d in ipairs(r.draws) do r.draws[i] = arr(d) end
    RES[seq] = r
  end
  return RES[seq]
end

local function put_res(seq, r)
  RES[seq] = r
  redis.call('HSET', K_R, seq_key(seq), enc(r))
end

local function held_of(r)
  local sum = 0
  for _, d in ipairs(r.draws) do sum = sum + d[2] end
  return sum
end

local function get_user(user)
  local text = redis.call('HGET', K_U, user)
  return text and cjson.decode(text) or nil
end

local function put_user(user, u)
  redis.call('HSET', K_U, user, enc(u))
end

local function user_remaining(user)
  local u = get_user(user)
  if u == nil or u.limit == nil then return nil end
  return math.max(0, u.limit - u.used)
end

-- Events: the outbox, appended in the same atomic step as the change they record.
local REQUEST = nil
local function emit(a, at, kind, data)
  a.last_event = a.last_event + 1
  redis.call('XADD', K_E, '*', 'account', ACCOUNT, 'seq', enc(a.last_event), 'at', enc(at),
    'request', REQUEST or '', 'kind', kind, 'data', enc(data))
end

-- Business keys charged this cycle.
local function key_charged(key)
  return key ~= nil and redis.call('SISMEMBER', K_K, key) == 1
end

-- Primitives (src/ledger/account.rs) ----------------------------------------------------------

local function decline(reason, requested, avail, remaining, held, state)
  return { declined = { reason = reason, requested = requested, available = avail, user_remaining = remaining,
    held = held or 0, state = state } }
end

-- The checks every new hold passes, in order: the account's credit, then the user's limit.
local function admit(a, user, amount)
  local avail = available(a)
  local remaining = user_remaining(user)
  if avail < amount then return decline('insufficient_credit', amount, avail, remaining) end
  if remaining ~= nil and remaining < amount then return decline('user_limit_reached', amount, avail, remaining) end
  return nil
end

local function reservation_decline(a, seq, reason, requested)
  local r = get_res(seq)
  return decline(reason, requested, available(a), user_remaining(r.user), held_of(r), r.state)
end

-- Burn order: soonest expiry first, then kind order, then age.
local function burns_before(x, y)
  if x.expires ~= y.expires then return x.expires < y.expires end
  if RANK[x.kind] ~= RANK[y.kind] then return RANK[x.kind] < RANK[y.kind] end
  return x.id < y.id
end

-- Takes `amount` from live lots, soonest expiry first (ties: kind order, then age).
local function draw(a, amount)
  local order = {}
  for id, lot in pairs(a.lots) do
    if lot.remaining > 0 then order[#order + 1] = lot end
  end
  table.sort(order, burns_before)
  local draws = arr()
  local left = amount
  for _, lot in ipairs(order) do
    if left == 0 then break end
    local take = math.min(left, lot.remaining)
    lot.remaining = lot.remaining - take
    left = left - take
    draws[#draws + 1] = arr({ lot.id, take })
  end
  return draws
end

local function grant(a, kind, amount, at, expires, from_plan)
  a.last_lot = a.last_lot + 1
  local id = a.last_lot
  a.lots[id] = { id = id, kind = kind, granted = amount, remaining = amount, granted_ms = at, expires = expires,
    from_plan = from_plan }
  a.granted = a.granted + amount
  emit(a, at, 'lot_granted', { lot = id, kind = kind, amount = amount, expires = expires, from_plan = from_plan })
  return id
end

local function count_usage(a, seq, amount)
  local r = get_res(seq)
  if r.ugen ~= a.gen then
    r.ugen = a.gen
    r.ucnt = 0
  end
  r.ucnt = r.ucnt + amount
  put_res(seq, r)
  local u = get_user(r.user) or { used = 0 }
  u.used = u.used + amount
  put_user(r.user, u)
end

local function uncount_usage(a, seq, returned)
  local r = get_res(seq)
  if r.ugen ~= a.gen then return end
  local back = math.min(returned, r.ucnt)
  r.ucnt = r.ucnt - back
  put_res(seq, r)
  local u = get_user(r.user)
  if u then
    u.used = u.used - back
    put_user(r.user, u)
  end
end

-- Closes an open reservation at `at` (now, or its deadline when it expired): what it still holds
-- goes back to its lots if they were alive at that instant, otherwise to expired. Returns the
-- amount released.
local function close(a, seq, state, at)
  local r = get_res(seq)
  local total, expired = 0, 0
  local returned = arr()
  for _, d in ipairs(r.draws) do
    total = total + d[2]
    local lot = a.lots[d[1]]
    if lot and lot.expires > at then
      lot.remaining = lot.remaining + d[2]
      returned[#returned + 1] = arr({ d[1], d[2] })
    else
      expired = expired + d[2]
    end
  end
  r.draws = arr()
  r.state = state
  r.returned = total
  r.closed = at
  put_res(seq, r)
  redis.call('ZREM', K_D, seq_key(seq))
  redis.call('ZADD', K_P, enc(at + RETENTION), 'r:' .. seq_key(seq))
  a.held = a.held - total
  a.expired = a.expired + expired
  uncount_usage(a, seq, total)
  emit(a, at, 'closed', { res = seq, state = state, returned = returned, expired = expired })
  return total
end

local function expire_lot(a, id, at)
  local lot = a.lots[id]
  a.lots[id] = nil
  a.expired = a.expired + lot.remaining
  emit(a, at, 'lot_expired', { lot = id, amount = lot.remaining })
end

local function grant_plan_lots(a, plan_credits, addon_credits, at)
  a.pg = a.pg + plan_credits
  a.ag = a.ag + addon_credits
  if plan_credits > 0 then grant(a, 'plan', plan_credits, at, a.ce, true) end
  if addon_credits > 0 then grant(a, 'addon', addon_credits, at, a.ce, true) end
end

-- Begins a cycle: user usage and business keys reset, and the plan's lots are granted.
local function start_cycle(a, cs, ce)
  a.cs, a.ce = cs, ce
  a.gen = a.gen + 1
  a.pg, a.ag = 0, 0
  redis.call('DEL', K_K)
  local flat = redis.call('HGETALL', K_U)
  for i = 1, #flat, 2 do
    local u = cjson.decode(flat[i + 1])
    u.used = 0
    put_user(flat[i], u)
  end
  emit(a, cs, 'cycle_started', { cs = cs, ce = ce })
  if a.plan then grant_plan_lots(a, a.plan.plan, a.plan.addon, cs) end
end

-- Brings the account up to `now` by replaying what time did, in time order: lots expire at their
-- expiry, holds at their deadline, cycles renew at their end (every cycle that began). At one
-- instant lots go first, then holds, then the renewal. Idempotent.
local function catch_up(a, now)
  while true do
    local at, due, id = nil, nil, nil
    for lot_id, lot in pairs(a.lots) do
      if lot.expires <= now and (at == nil or lot.expires < at or (lot.expires == at and lot_id < id)) then
        at, due, id = lot.expires, 'lot', lot_id
      end
    end
    local first = redis.call('ZRANGE', K_D, 0, 0, 'WITHSCORES')
    if #first > 0 then
      local deadline = tonumber(first[2])
      if deadline <= now and (at == nil or deadline < at) then at, due, id = deadline, 'hold', tonumber(first[1]) end
    end
    if a.ce <= now and (at == nil or a.ce < at) then at, due = a.ce, 'renewal' end
    if at == nil then return end
    if due == 'lot' then
      expire_lot(a, id, at)
    elseif due == 'hold' then
      close(a, id, 'expired', at)
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
end

-- Views ---------------------------------------------------------------------------------------

local function reservation_view(seq)
  local r = get_res(seq)
  return { seq = seq, user = r.user, category = r.category, state = r.state, reserved = r.reserved,
    committed = r.committed, held = held_of(r), returned = r.returned, commits = r.commits, created = r.created,
    deadline = r.deadline, closed = r.closed, labels = r.labels }
end

local function user_view(user)
  local u = get_user(user) or { used = 0 }
  local remaining = nil
  if u.limit ~= nil then remaining = math.max(0, u.limit - u.used) end
  return { user = user, limit = u.limit, used = u.used, remaining = remaining }
end

-- The operation skeleton (Ledger::run in src/ledger/model.rs) ---------------------------------

local function err(code)
  return enc({ error = code })
end

-- Runs `body(a, now)` idempotently. `opts.create`: may create the account. `opts.seq`: the
-- reservation acted on, whose own hash (KEYS[10]) remembers the answer for as long as the
-- reservation is kept; other answers go to the account's hash Q, purged by the sweep after
-- retention. `body` returns (answer, error code); it checks everything before it writes.
-- Returns the reply JSON.
local function run(opts, body)
  local now = now_ms()
  local a = load_account()
  local created = false
  if a == nil then
    if not opts.create then return err('account_not_found') end
    a = new_account(now)
    created = true
  end
  catch_up(a, now)
  local qkey = opts.seq and KEYS[10] or K_Q
  local remembered = nil
  if not opts.seq or get_res(opts.seq) then remembered = redis.call('HGET', qkey, opts.request) end
  if remembered then
    if not created then save_account(a) end
    if string.sub(remembered, 1, #FINGERPRINT) ~= FINGERPRINT then return err('request_id_reused') end
    return string.sub(remembered, #FINGERPRINT + 2)
  end
  REQUEST = opts.request
  local answer, code = body(a, now)
  if code then
    if not created then save_account(a) end
    return err(code)
  end
  local reply = enc(answer)
  redis.call('HSET', qkey, opts.request, FINGERPRINT .. '|' .. reply)
  if not opts.seq then
    local deadline = now
    if answer.done and type(answer.done.reservation) == 'number' then
      deadline = math.max(now, get_res(answer.done.reservation).deadline)
    end
    redis.call('ZADD', K_P, enc(deadline + RETENTION), 'q:' .. opts.request)
  end
  save_account(a)
  return reply
end

-- Reads: the account caught up to now, or an error when it does not exist.
local function read(body)
  local now = now_ms()
  local a = load_account()
  if a == nil then return err('account_not_found') end
  catch_up(a, now)
  local reply = body(a, now)
  save_account(a)
  return reply
end

-- Looks up a reservation and declines when it is no longer open.
local function closed_decline(a, seq, requested)
  local r = get_res(seq)
  if r == nil then return nil, 'reservation_not_found' end
  if r.state == 'held' then return nil, nil end
  local reason = r.state == 'expired' and 'reservation_expired' or 'reservation_closed'
  return reservation_decline(a, seq, reason, requested), nil
end

local function check_balance(a, amount)
  return available(a) + a.held + amount <= BALANCE_MAX
end

-- Opens a reservation holding `amount` (already admitted) and returns its sequence.
local function open_reservation(a, now, deadline, amount, user, category, labels)
  local draws = draw(a, amount)
  a.last_res = a.last_res + 1
  local seq = a.last_res
  put_res(seq, { user = user, category = category, state = 'held', reserved = amount, committed = 0,
    draws = draws, returned = 0, commits = 0, created = now, deadline = deadline, labels = labels,
    opened_by = REQUEST, ugen = a.gen, ucnt = 0 })
  redis.call('ZADD', K_D, enc(deadline), seq_key(seq))
  a.held = a.held + amount
  count_usage(a, seq, amount)
  emit(a, now, 'reserved', { res = seq, user = user, category = category, amount = amount,
    draws = pairs_list(draws), deadline = deadline, labels = labels })
  return seq
end

-- Moves `amount` (checked against the hold) from held to spent, from the first draws first.
local function spend(a, now, seq, amount, key, already, labels)
  local r = get_res(seq)
  local left = amount
  local taken = arr()
  local kept = arr()
  for _, d in ipairs(r.draws) do
    local take = math.min(left, d[2])
    if take > 0 then
      taken[#taken + 1] = arr({ d[1], take })
      left = left - take
    end
    if d[2] - take > 0 then kept[#kept + 1] = arr({ d[1], d[2] - take }) end
  end
  r.draws = kept
  r.committed = r.committed + amount
  r.commits = r.commits + 1
  put_res(seq, r)
  a.held = a.held - amount
  a.spent = a.spent + amount
  if key ~= nil and not already then redis.call('SADD', K_K, key) end
  emit(a, now, 'committed', { res = seq, user = r.user, category = r.category, cycle = a.cs, amount = amount,
    draws = taken, key = key, already = already, labels = labels })
end
