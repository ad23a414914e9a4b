-- reservation.lua: one reservation, its account caught up to now (GetReservation).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"seq": 7}
-- Reply: {"done": {"seq": 7, "user": "ann", "state": "held", "reserved": 50, ...}}
--     or {"error": "account_not_found" | "reservation_not_found"}
-- Example: a hold past its deadline is expired by the catch-up and reported as "expired".
return read(function(a, now)
  if get_res(ARGS.seq) == nil then return err('reservation_not_found') end
  return enc({ done = reservation_view(ARGS.seq) })
end)
