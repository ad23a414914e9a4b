-- commit.lua: move part of a hold to spent; `final` closes it and returns the rest
-- (Ledger::commit).
-- KEYS: the account's nine keys, then the reservation's answer hash (see lib.lua).
-- ARGV[4]: {"request": "r-2", "seq": 7, "amount": 3, "final": false, "key": "contact:1:email",
--           "labels": {"provider": "x"}}            ("key" absent: no charge-once rule)
-- Reply: {"done": {"charged": 3, "already": false, "held": 47, "returned": 0, "reservation": {...}}}
--     or {"declined": {"reason": "exceeds_hold" | "reservation_expired" | "reservation_closed", ...}}
--     or {"error": "account_not_found" | "reservation_not_found" | "request_id_reused"}
-- Example: reservation 7 holds 50; a commit of 3 with a key not yet charged this cycle spends 3
-- (from its first lots first), records the key, and appends a "committed" event.
return run({ request = ARGS.request, seq = ARGS.seq }, function(a, now)
  local declined, code = closed_decline(a, ARGS.seq, ARGS.amount)
  if code then return nil, code end
  if declined then return declined end
  local already = key_charged(ARGS.key)
  local charge = already and 0 or ARGS.amount
  if charge > held_of(get_res(ARGS.seq)) then
    return reservation_decline(a, ARGS.seq, 'exceeds_hold', charge)
  end
  spend(a, now, ARGS.seq, charge, ARGS.key, already, ARGS.labels)
  local returned = 0
  if ARGS.final then returned = close(a, ARGS.seq, 'committed', now) end
  local view = reservation_view(ARGS.seq)
  return { done = { charged = charge, already = already, held = view.held, returned = returned, reservation = view } }
end)
