-- release.lua: close a reservation and return what is not committed (Ledger::release).
-- KEYS: the account's nine keys, then the reservation's answer hash (see lib.lua).
-- ARGV[4]: {"request": "r-4", "seq": 7}
-- Reply: {"done": {"returned": 47, "reservation": {...}}}
--     or {"declined": {"reason": "reservation_expired" | "reservation_closed", ...}}
--     or {"error": "account_not_found" | "reservation_not_found" | "request_id_reused"}
-- Example: reservation 7 holds 47 after commits of 3; release returns the 47 to the lots they
-- came from (to expired for lots already dead) and appends a "closed" event.
return run({ request = ARGS.request, seq = ARGS.seq }, function(a, now)
  local declined, code = closed_decline(a, ARGS.seq, 0)
  if code then return nil, code end
  if declined then return declined end
  local returned = close(a, ARGS.seq, 'released', now)
  return { done = { returned = returned, reservation = reservation_view(ARGS.seq) } }
end)
