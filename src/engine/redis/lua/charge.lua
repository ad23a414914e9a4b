-- charge.lua: reserve and final-commit in one step (Ledger::charge).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"request": "r-5", "user": "ann", "category": "api", "amount": 1, "key": "...",
--           "labels": {}}
-- Reply: {"done": {"reservation": 8, "charged": 1, "already": false, "available": 999}}
--        ({"done": {"charged": 0, "already": true, ...}} when the key was charged this cycle)
--     or {"declined": {"reason": "insufficient_credit" | "user_limit_reached", ...}}
--     or {"error": "account_not_found" | "request_id_reused"}
-- Example: 1 credit leaves the lots, reservation 8 opens and closes committed at once; events
-- "reserved", "committed", "closed".
return run({ request = ARGS.request }, function(a, now)
  if key_charged(ARGS.key) then
    return { done = { charged = 0, already = true, available = available(a) } }
  end
  local declined = admit(a, ARGS.user, ARGS.amount)
  if declined then return declined end
  local seq = open_reservation(a, now, now, ARGS.amount, ARGS.user, ARGS.category, ARGS.labels)
  spend(a, now, seq, ARGS.amount, ARGS.key, false, ARGS.labels)
  close(a, seq, 'committed', now)
  return { done = { reservation = seq, charged = ARGS.amount, already = false, available = available(a) } }
end)
