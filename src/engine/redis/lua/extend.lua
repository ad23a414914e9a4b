-- extend.lua: hold more credits and/or move the deadline later (Ledger::extend).
-- KEYS: the account's nine keys, then the reservation's answer hash (see lib.lua).
-- ARGV[4]: {"request": "r-3", "seq": 7, "amount": 2, "ttl": 240000}   ("ttl" absent: keep deadline)
-- Reply: {"done": {"added": 2, "held": 49, "deadline": <max(deadline, now + ttl)>, "reservation": {...}}}
--     or {"declined": {"reason": "insufficient_credit" | "user_limit_reached" | "reservation_expired"
--                     | "reservation_closed", ...}}
--     or {"error": "account_not_found" | "reservation_not_found" | "request_id_reused"}
-- Example: a dialer's hold of 6 grows by 2 (one more minute) under Reserve's checks, and its
-- deadline moves to now + 4 min; an "extended" event is appended.
return run({ request = ARGS.request, seq = ARGS.seq }, function(a, now)
  local declined, code = closed_decline(a, ARGS.seq, ARGS.amount)
  if code then return nil, code end
  if declined then return declined end
  local r = get_res(ARGS.seq)
  if ARGS.amount > 0 then
    declined = admit(a, r.user, ARGS.amount)
    if declined then return declined end
  end
  local draws = arr()
  if ARGS.amount > 0 then draws = draw(a, ARGS.amount) end
  local deadline = r.deadline
  if ARGS.ttl then deadline = math.max(deadline, now + ARGS.ttl) end
  redis.call('ZADD', K_D, enc(deadline), seq_key(ARGS.seq))
  r.deadline = deadline
  r.reserved = r.reserved + ARGS.amount
  for _, d in ipairs(draws) do
    local merged = false
    for _, part in ipairs(r.draws) do
      if part[1] == d[1] then
        part[2] = part[2] + d[2]
        merged = true
      end
    end
    if not merged then r.draws[#r.draws + 1] = arr({ d[1], d[2] }) end
  end
  put_res(ARGS.seq, r)
  a.held = a.held + ARGS.amount
  count_usage(a, ARGS.seq, ARGS.amount)
  emit(a, now, 'extended', { res = ARGS.seq, amount = ARGS.amount, draws = pairs_list(draws), deadline = deadline })
  -- The Reserve that opened the hold stays remembered as long as the hold lives.
  if r.opened_by and redis.call('HEXISTS', K_Q, r.opened_by) == 1 then
    redis.call('ZADD', K_P, 'GT', enc(deadline + RETENTION), 'q:' .. r.opened_by)
  end
  local view = reservation_view(ARGS.seq)
  return { done = { added = ARGS.amount, held = view.held, deadline = deadline, reservation = view } }
end)
