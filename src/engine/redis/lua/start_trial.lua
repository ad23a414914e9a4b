-- start_trial.lua: the one-time trial grant (Ledger::start_trial).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"request": "r-8", "credits": 100, "duration": 1209600000}
-- Reply: {"done": {"lot": 1, "expires": <now + duration>, "totals": {...}}}
--     or {"declined": {"reason": "trial_already_used", "requested": 100, ...}}
--     or {"error": "balance:credits" | "request_id_reused"}
-- Example: a new account gets a trial lot of 100 credits expiring in 14 days; a second call
-- with another request id is declined.
return run({ request = ARGS.request, create = true }, function(a, now)
  if a.trial then return decline('trial_already_used', ARGS.credits, available(a), nil, 0, nil) end
  if not check_balance(a, ARGS.credits) then return nil, 'balance:credits' end
  local expires = now + ARGS.duration
  a.trial = true
  local lot = grant(a, 'trial', ARGS.credits, now, expires, false)
  return { done = { lot = lot, expires = expires, totals = totals(a) } }
end)
