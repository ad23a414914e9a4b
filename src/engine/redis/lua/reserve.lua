-- reserve.lua: hold credits for a piece of work, all or nothing (Ledger::reserve).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 user, 7 category, 8 amount, 9 ttl ms,
--       10 labels (a JSON object), 11 unit and 12 least units of a partial hold ("" "": all or
--       nothing; otherwise as many whole units of `unit` credits as fit, up to the amount)
-- Reply: {"ok", reservation seq, amount held, deadline, available}, a decline
--        ("insufficient_credit" | "user_limit_reached" | "category_budget_reached"), {"err", "account_not_found" |
--        "request_id_reused"} or {"due"}.
-- Example: an account with 1000 available; ARGV 4.. = r-1, <stamp>, ann, email, 50, 300000, {} ->
-- {"ok", 7, 50, now + 300000, 950}: 50 left the lots (soonest expiry first), reservation 7 holds
-- them until the deadline, and a "reserved" event is appended.
register('reserve', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 12, 'reserve')
  local user, category, amount, ttl, labels = args[6], args[7], int(args[8]), int(args[9]), args[10]
  local unit, min_units = opt_int(args[11]), opt_int(args[12])
  local opts = { request = args[4], stamp = args[5] }
  function opts.keep(reply, now)
    if reply[1] == 'ok' then return math.max(now, reply[4]) end
    return now
  end
  return run(opts, function(a, now)
    amount = hold_amount(a, user, category, amount, unit, min_units)
    local declined, u, c = admit(a, user, category, amount)
    if declined then return declined end
    local r = open_reservation(a, now, now + ttl, amount, user, category, labels, u, c)
    return { 'ok', r.seq, amount, r.deadline, a.avail }
  end)
end)
