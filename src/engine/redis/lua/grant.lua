-- grant.lua: add credits (add-on purchase, promo, adjustment), usable at once (Ledger::grant).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"request": "r-7", "kind": "addon", "amount": 500, "expires": 1777593600000}
--          ("expires" absent: the end of the current cycle)
-- Reply: {"done": {"lot": 3, "expires": ..., "totals": {...}}}
--     or {"error": "expires_in_past" | "balance:amount" | "request_id_reused"}
-- Example: 500 add-on credits become available at once in a new lot expiring with the cycle.
return run({ request = ARGS.request, create = true }, function(a, now)
  local expires = ARGS.expires or a.ce
  if expires <= now then return nil, 'expires_in_past' end
  if not check_balance(a, ARGS.amount) then return nil, 'balance:amount' end
  local lot = grant(a, ARGS.kind, ARGS.amount, now, expires, false)
  return { done = { lot = lot, expires = expires, totals = totals(a) } }
end)
