-- extend.lua: hold more credits and/or move the deadline later (Ledger::extend).
-- KEYS: the account's 13 keys, then the reservation's answer hash X (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 seq, 7 amount, 8 ttl ms ("" keeps the deadline),
--       9 unit and 10 least units of a partial extension ("" "": all or nothing; see reserve.lua)
-- Reply: {"ok", added, held, deadline, <reservation view>}, a decline ("insufficient_credit" |
--        "user_limit_reached" | "category_budget_reached" | "reservation_expired" | "reservation_closed", with the
--        reservation's view), {"err",
--        "account_not_found" | "reservation_not_found" | "request_id_reused"} or {"due"}.
-- Example: a dialer's hold of 6 grows by 2 under Reserve's checks and its deadline moves to
-- max(deadline, now + ttl); an "extended" event is appended.
register('extend', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS + 1, 10, 'extend')
  local seq, amount, ttl = int(args[6]), int(args[7]), opt_int(args[8])
  local unit, min_units = opt_int(args[9]), opt_int(args[10])
  return run({ request = args[4], stamp = args[5], seq = seq }, function(a, now, r)
    local declined = closed_decline(a, r, amount)
    if declined then return declined end
    local u, c = nil, nil
    if amount > 0 then
      amount = hold_amount(a, r.user, r.category, amount, unit, min_units)
      declined, u, c = admit(a, r.user, r.category, amount)
      if declined then return with_view(declined, r) end
    end
    -- After this point the extension happens.
    local draws = {}
    if amount > 0 then draws = draw(a, amount) end
    local deadline = r.deadline
    if ttl then deadline = math.max(deadline, now + ttl) end
    if deadline ~= r.deadline then redis.call('ZADD', K_D, deadline, id16(seq)) end
    r.deadline = deadline
    r.reserved = r.reserved + amount
    for _, d in ipairs(draws) do
      local merged = false
      for _, part in ipairs(r.draws) do
        if part[1] == d[1] then
          part[2] = part[2] + d[2]
          merged = true
        end
      end
      if not merged then r.draws[#r.draws + 1] = { d[1], d[2] } end
    end
    a.held = a.held + amount
    count_usage(a, r, amount, u, c)
    put_res(r)
    emit(a, now, 'extended', string.format('{"res":%d,"amount":%d,"draws":%s,"deadline":%d}', seq, amount,
      json_draws(draws), deadline))
    -- The Reserve that opened the hold stays remembered as long as the hold lives (its keep
    -- only grows: the sweep finds it kept longer and queues it again). An answer already past
    -- its keep is forgotten, deleted or not, and stays so.
    local opening_key = r.opened_by and request_key(r.opened_by)
    local opening = opening_key and redis.call('HGET', K_Q, opening_key)
    local kept = opening and keep_of(opening)
    if kept and kept > now and kept < deadline + RETENTION then
      local at = string.find(opening, SEP, 1, true)
      redis.call('HSET', K_Q, opening_key, string.format('%d', deadline + RETENTION) .. string.sub(opening, at))
    end
    local reply = { 'ok', amount, held_of(r), deadline }
    view_fields(reply, r)
    return reply
  end)
end)
