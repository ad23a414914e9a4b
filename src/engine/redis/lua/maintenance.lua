-- maintenance.lua: the functions of the background sweep, of reads that must catch up first, and
-- of the `rebuild` command.

-- catch_up.lua: bring an account up to now (expire lots and holds, renew the cycle), for a read
-- that answered {"due"}. At most CATCHUP_STEPS_MAX steps per call.
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua)
-- Reply: {"ok", 1 when caught up | 0 when more is due} or {"err", "account_not_found"}.
-- Example: a renewal boundary passed unnoticed: the cycle renews (events "lot_expired",
-- "cycle_started", "lot_granted"), then {"ok", 1}.
register('catch_up', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 3, 'catch_up')
  local a = load_account()
  if a == nil then return err('account_not_found') end
  local done = current(a, now_ms())
  save_account(a)
  return { 'ok', done and 1 or 0 }
end)

-- Forgets the request ids at F's head that are past their keep (at most PURGE_MAX of F's items
-- per call), in the order they were remembered. The ids behind a mark \31<t> were remembered
-- from t on, before the next mark (at most t + retention/FORGET_MARKS): each comes due no sooner
-- than t + retention, so the sweep stops at the first mark not yet due, or at an id not yet due
-- while a later one of its chunk could be (kept no longer than a retention past when it was
-- remembered). An id kept longer than that (a Reserve's, past its hold's deadline; one an Extend
-- carried on) is queued again at F's tail. P's member q is then set to when the head next comes
-- due (none when F is empty). Returns true when no more is due now.
local function forget_due(a, now)
  local items = redis.call('LRANGE', K_F, 0, PURGE_MAX - 1)
  local span = math.floor(RETENTION / FORGET_MARKS)
  local gone, again = {}, {}
  local mark, taken, next_due = nil, 0, nil
  for i, item in ipairs(items) do
    if string.byte(item, 1) == 31 then
      local t = tonumber(string.sub(item, 2))
      if t + RETENTION > now then
        next_due = t + RETENTION
        break
      end
      mark = t
    else
      local remembered = redis.call('HGET', K_Q, item)
      local keep = remembered and keep_of(remembered)
      if not remembered then
        -- Already gone (nothing to do).
      elseif not keep or keep <= now then
        gone[#gone + 1] = item
      elseif mark and mark + span + RETENTION <= now then
        again[#again + 1] = item
      else
        -- Not due yet, and its chunk's later ids may not be either: come back then (or when the
        -- whole chunk is due, whichever is first).
        next_due = math.min(keep, (mark or now) + span + RETENTION)
        break
      end
    end
    taken = i
  end
  if #gone > 0 then redis.call('HDEL', K_Q, unpack(gone)) end
  if taken > 0 then
    redis.call('LTRIM', K_F, taken, -1)
    -- A chunk left part way keeps its mark.
    local head = mark and redis.call('LINDEX', K_F, 0)
    if head and string.byte(head, 1) ~= 31 then redis.call('LPUSH', K_F, SEP .. string.format('%d', mark)) end
  end
  if #again > 0 then enqueue(a, now, unpack(again)) end
  if next_due == nil and redis.call('EXISTS', K_F) == 0 then
    redis.call('ZREM', K_P, 'q')
    redis.call('HDEL', K_A, 'qm')
    a.qm = nil
    a.loaded.qm = nil
    return true
  end
  redis.call('ZADD', K_P, next_due or now, 'q')
  return next_due ~= nil and next_due > now
end

-- sweep_account.lua: the background pass for one account: catch up (expire holds and lots, renew
-- the cycle), forget closed reservations and request ids past retention (at most PURGE_MAX per
-- call), and set the account's wake-up time exactly (Ledger::sweep, for one account).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 the prefix of the reservations' answer hashes X ("cs:{sN}:x:<account>:";
--       same hash slot as KEYS, so this runs on Redis Cluster too)
-- Reply: {holds expired, 1 when all done | 0 when the account needs another pass}.
-- Example: a dialer died holding 4 past its deadline: the hold closes as expired at its deadline,
-- the 4 return to their lot, and {1, 1} is returned.
register('sweep_account', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 4, 'sweep_account')
  local now = now_ms()
  local a = load_account()
  if a == nil then
    redis.call('ZREM', K_W, ACCOUNT)
    return { 0, 1 }
  end
  local open_before = redis.call('ZCARD', K_D)
  local caught_up = a.due > now or catch_up(a, now)
  local expired = open_before - redis.call('ZCARD', K_D)
  local due = redis.call('ZRANGEBYSCORE', K_P, '-inf', now, 'LIMIT', 0, PURGE_MAX)
  local gone, passed = {}, true
  for _, member in ipairs(due) do
    if member == 'q' then
      passed = forget_due(a, now)
    elseif string.byte(member, 1) == 114 then
      -- The reservation goes, and with it the answers to calls on it (its own hash).
      local id = string.sub(member, 2)
      redis.call('HDEL', res_key(tonumber(id)), 'm' .. id, 'i' .. id)
      redis.call('UNLINK', args[4] .. id)
      gone[#gone + 1] = member
    else
      -- q<id>: a request id a layout-2 sidecar remembered against this layout (the upgrade
      -- procedure forbids it). Forgotten as layout 2 would, rather than failing every sweep.
      redis.call('HDEL', K_Q, string.sub(member, 2))
      gone[#gone + 1] = member
    end
  end
  if #gone > 0 then redis.call('ZREM', K_P, unpack(gone)) end
  local done = caught_up and passed and #due < PURGE_MAX
  local wake = now
  if done then
    wake = a.due
    local purge_at = first_score(K_P)
    if purge_at and purge_at < wake then wake = purge_at end
  end
  a.wake = wake
  redis.call('ZADD', K_W, wake, ACCOUNT)
  save_account(a)
  return { expired, done and 1 or 0 }
end)

-- due.lua: which accounts of a shard need the sweep now. Reads only (no-writes; FCALL_RO).
-- KEYS: 1 cs:{sN}:wake
-- ARGV: 1 now (Unix ms) or "" for Redis TIME, 2 the most accounts to return
-- Reply: account ids whose wake-up time has come, soonest first.
-- Example: wake = {acme: 1000, globex: 5000}, now 2000, limit 100 -> {"acme"}.
redis.register_function { function_name = FN_PREFIX .. 'due', flags = { 'no-writes' }, callback = function(keys, args)
  assert(#keys == 1 and #args == 2, 'due: expected 1 key and 2 arguments')
  NOW_ARG = args[1]
  return redis.call('ZRANGEBYSCORE', keys[1], '-inf', now_ms(), 'LIMIT', 0, int(args[2]))
end }

-- restore.lua: replace an account's state with a snapshot rebuilt from the SQL ledger (the
-- `rebuild` command). Remembered request ids are not part of the ledger and are not restored.
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 the snapshot as JSON (src/ledger/snapshot.rs): {"account": "acme",
--       "cs": ..., "ce": ..., "gen": 3, "pg": 1000, "ag": 0, "plan": {...}, "lots": [...],
--       "last_lot": 4, "last_res": 9, "last_event": 31, "trial": false, "granted": ..., "held": ...,
--       "spent": ..., "expired": ..., ["owed": ...,] "reservations": [{"seq": 9, "state": "held", "draws": [[4, 10]],
--       ...}], "users": {"ann": {"limit": 500, "used": 10}}, "keys": ["contact:1:mobile"]}
-- Reply: the number of reservations written.
-- Example: after Redis lost everything, `rebuild --account acme` writes acme's lots, open and
-- recent reservations, users and business keys exactly as the ledger's replay left them.
register('restore', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 4, 'restore')
  local s = cjson.decode(args[4])
  local old = load_account()
  if old then
    for bucket = 0, math.floor(old.res / RES_BUCKET) do redis.call('UNLINK', res_key(bucket * RES_BUCKET)) end
  end
  for _, key in ipairs({ K_A, K_L, K_B, K_E, K_D, K_Q, K_P, K_U, K_K, K_F }) do redis.call('DEL', key) end
  local a = { loaded = {}, cold = true, avail = 0, held = s.held, granted = s.granted, spent = s.spent, expired = s.expired,
    owed = type(s.owed) == 'number' and s.owed or 0,
    cs = s.cs, ce = s.ce, gen = s.gen, pg = s.pg, ag = s.ag, lot = s.last_lot, res = s.last_res, ev = s.last_event,
    trial = s.trial and 1 or 0, due = s.ce, wake = s.ce }
  if type(s.plan) == 'table' then
    a.plan = s.plan
    save_plan(a)
  end
  for _, lot in ipairs(s.lots) do
    redis.call('HSET', K_L, 'm' .. lot.id, string.format('%s,%d,%d,%d,%d', lot.kind, lot.granted, lot.granted_ms,
      lot.expires, lot.from_plan and 1 or 0), 'r' .. lot.id, lot.remaining)
    redis.call('ZADD', K_E, lot.expires, id16(lot.id))
    if lot.remaining > 0 then redis.call('ZADD', K_B, lot.expires, burn_member(lot.kind, lot.id)) end
    a.avail = a.avail + lot.remaining
    a.due = math.min(a.due, lot.expires)
  end
  for _, snap in ipairs(s.reservations) do
    local r = { seq = snap.seq, state = snap.state, reserved = snap.reserved, committed = snap.committed,
      commits = snap.commits, deadline = snap.deadline, returned = snap.returned, ugen = snap.ugen, ucnt = snap.ucnt,
      draws = snap.draws }
    if type(snap.closed) == 'number' then r.closed = snap.closed end
    local opened_by = type(snap.opened_by) == 'string' and snap.opened_by or ''
    local labels = next(snap.labels) == nil and '{}' or cjson.encode(snap.labels)
    redis.call('HSET', res_key(r.seq), 'm' .. r.seq, pack_res(r), 'i' .. r.seq,
      table.concat({ snap.user, snap.category, string.format('%d', snap.created), opened_by, labels }, SEP))
    if r.state == 'held' then
      redis.call('ZADD', K_D, r.deadline, id16(r.seq))
      a.due = math.min(a.due, r.deadline)
    else
      redis.call('ZADD', K_P, r.closed + RETENTION, 'r' .. r.seq)
    end
  end
  for user, u in pairs(s.users) do
    put_user(a, user, { limit = type(u.limit) == 'number' and u.limit or nil, used = u.used })
  end
  for category, c in pairs(type(s.categories) == 'table' and s.categories or {}) do
    put_category(a, category, { limit = type(c.limit) == 'number' and c.limit or nil, used = c.used })
  end
  for _, key in ipairs(s.keys) do redis.call('SADD', K_K, key) end
  a.wake = a.due
  local purge_at = first_score(K_P)
  if purge_at and purge_at < a.wake then a.wake = purge_at end
  redis.call('ZADD', K_W, a.wake, ACCOUNT)
  save_account(a)
  return #s.reservations
end)

-- upgrade_requests.lua: converts one account's remembered request ids from layout 2 to layout 3
-- (`rebuild --upgrade-layout`, run while no sidecar serves). Layout 2 kept each id's answer as
-- fingerprint\31answer in Q and the id's own purge-schedule member q<id> in P, scored by its
-- keep; layout 3 puts the keep first in the answer and queues the id in F, in keep order (as if
-- remembered a retention before its keep, or now for an id kept longer, such as an open hold's
-- Reserve: no mark is ever in the future), and P's one member q says when F's head comes due.
-- Each id is converted and its old member removed in the same call, so the upgrade can be run
-- again after an interruption and converts nothing twice.
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 how many of P's first members (by score) are not ids (r<seq>): where
--       this call starts ("0" at first)
-- Reply: {1 when the account is done | 0, ARGV 4 for the next call}.
-- Example: now 700000, Q = {r-1: "<fp>\31ok\317"}, P = {q r-1: 87000000}, retention 86400000,
-- "0" -> Q = {r-1: "87000000\31<fp>\31ok\317"}, F = {"\31600000", "r-1"}, P = {q: 87000000}, {1, 0}.
register('upgrade_requests', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 4, 'upgrade_requests')
  local a = load_account()
  -- An account part way through rekey_requests (an upgrade to layout 4 interrupted in it) is
  -- past this step: its ids are in layout 3's form, or already keyed.
  if a == nil or redis.call('HEXISTS', K_A, 'rk') == 1 then return { 1, 0 } end
  local now = now_ms()
  local skipped = int(args[4])
  local members = redis.call('ZRANGE', K_P, skipped, skipped + PURGE_MAX - 1, 'WITHSCORES')
  local old = {}
  for i = 1, #members, 2 do
    local member = members[i]
    if string.byte(member, 1) == 113 and #member > 1 then
      local id, keep = string.sub(member, 2), tonumber(members[i + 1])
      local remembered = redis.call('HGET', K_Q, id)
      if remembered then
        redis.call('HSET', K_Q, id, string.format('%d', keep) .. SEP .. remembered)
        enqueue(a, math.min(keep - RETENTION, now), id)
      end
      old[#old + 1] = member
    else
      skipped = skipped + 1
    end
  end
  if #old > 0 then redis.call('ZREM', K_P, unpack(old)) end
  local done = #members < 2 * PURGE_MAX
  if done then
    local head = redis.call('LINDEX', K_F, 0)
    if head and string.byte(head, 1) == 31 then
      local due = tonumber(string.sub(head, 2)) + RETENTION
      redis.call('ZADD', K_P, 'LT', due, 'q')
      wake_by(a, due)
    end
  end
  save_account(a)
  return { done and 1 or 0, skipped }
end)

-- rekey_requests.lua: files one account's remembered request ids under their keys, from layout 3
-- to layout 4 (`rebuild --upgrade-layout`, run while no sidecar serves; after upgrade_requests
-- when coming from layout 2). Layout 3 kept each id in Q and F as the id itself; layout 4 keeps
-- its key (request_key). F holds each of Q's ids once, in remembering order: each call takes up
-- to PURGE_MAX items from F's head, files their answers in Q under their keys, and pushes the
-- items back at F's tail as keys (marks as they were), so F ends in its own order. A's field
-- `rk` counts the items still to convert while the account is part way; a converted account
-- joins the shard's set of converted accounts (KEYS[14]), so a run interrupted part way goes on
-- where it stopped and converts nothing twice.
-- KEYS: the account's 13 keys (lib.lua), then cs:{sN}:upgraded.
-- ARGV: 1-3 (lib.lua)
-- Reply: 1 when the account is done, 0 when it needs another call, 2 when it was converted
-- before (an earlier run).
-- Example: Q = {r-1: "<keep>\31<fp>\31ok\317"}, F = {"\31600000", "r-1"} -> Q = {2L4GeC25XM1A1b:
-- "<keep>\31<fp>\31ok\317"}, F = {"\31600000", "2L4GeC25XM1A1b"}, acme in the set, 1.
register('rekey_requests', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS + 1, 3, 'rekey_requests')
  local converted = keys[ACCOUNT_KEYS + 1]
  if redis.call('SISMEMBER', converted, ACCOUNT) == 1 then return 2 end
  local left = tonumber(redis.call('HGET', K_A, 'rk') or redis.call('LLEN', K_F))
  if left > 0 then
    local items = redis.call('LPOP', K_F, math.min(left, PURGE_MAX))
    for i = 1, #items do
      local id = items[i]
      if string.byte(id, 1) ~= 31 then
        local key = request_key(id)
        local remembered = redis.call('HGET', K_Q, id)
        if remembered then
          redis.call('HDEL', K_Q, id)
          redis.call('HSET', K_Q, key, remembered)
        end
        items[i] = key
      end
    end
    redis.call('RPUSH', K_F, unpack(items))
    left = left - #items
  end
  if left > 0 then
    redis.call('HSET', K_A, 'rk', left)
    return 0
  end
  redis.call('HDEL', K_A, 'rk')
  redis.call('SADD', converted, ACCOUNT)
  return 1
end)
