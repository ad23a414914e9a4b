-- grant.lua: add credits (add-on purchase, promo, adjustment), usable at once (Ledger::grant).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 kind, 7 amount, 8 expires (Unix ms; ""
--       for the end of the current cycle), 9 create the account if missing ("1" | "0")
-- Reply: {"ok", lot id, expires, <totals>}, {"err", "account_not_found" | "expires_in_past" |
--        "balance:amount" | "request_id_reused"} or {"due"}.
-- Example: 500 add-on credits become available at once in a new lot expiring with the cycle.
register('grant', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 9, 'grant')
  local kind, amount, expires_arg, create = args[6], int(args[7]), opt_int(args[8]), args[9] == '1'
  assert(RANK[kind] ~= nil, 'grant: unknown lot kind')
  return run({ request = args[4], stamp = args[5], create = create }, function(a, now)
    cold(a)
    local expires = expires_arg or a.ce
    if expires <= now then return nil, 'expires_in_past' end
    if not check_balance(a, amount) then return nil, 'balance:amount' end
    local lot = grant(a, kind, amount, now, expires, false)
    return totals_fields({ 'ok', lot, expires }, a)
  end)
end)
