-- reserve.lua: hold credits for a piece of work, all or nothing (Ledger::reserve).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"request": "r-1", "user": "ann", "category": "email", "amount": 50, "ttl": 300000,
--           "labels": {"file": "leads.csv"}}
-- Reply: {"done": {"reservation": 7, "amount": 50, "deadline": <now + ttl>, "available": 950}}
--     or {"declined": {"reason": "insufficient_credit", "requested": 50, "available": 40, "held": 0}}
--     or {"error": "account_not_found" | "request_id_reused"}
-- Example: an account with 1000 available, ARGV[4] as above -> 50 leave its lots (soonest expiry
-- first), reservation 7 holds them until now + 5 min, and a "reserved" event is appended.
return run({ request = ARGS.request }, function(a, now)
  local declined = admit(a, ARGS.user, ARGS.amount)
  if declined then return declined end
  local deadline = now + ARGS.ttl
  local seq = open_reservation(a, now, deadline, ARGS.amount, ARGS.user, ARGS.category, ARGS.labels)
  return { done = { reservation = seq, amount = ARGS.amount, deadline = deadline, available = available(a) } }
end)
