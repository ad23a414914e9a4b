-- start_trial.lua: the one-time trial grant (Ledger::start_trial).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 credits, 7 duration ms, 8 create the
--       account if missing ("1" | "0")
-- Reply: {"ok", lot id, expires, <totals>}, a decline ("trial_already_used"), {"err",
--        "account_not_found" | "balance:credits" | "request_id_reused"} or {"due"}.
-- Example: a new account gets a trial lot of 100 credits expiring in 14 days; a second call
-- with another request id is declined.
register('start_trial', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 8, 'start_trial')
  local credits, duration, create = int(args[6]), int(args[7]), args[8] == '1'
  return run({ request = args[4], stamp = args[5], create = create }, function(a, now)
    cold(a)
    if a.trial == 1 then return decline('trial_already_used', credits, a.avail, nil, 0, nil, nil) end
    if not check_balance(a, credits) then return nil, 'balance:credits' end
    a.trial = 1
    local lot = grant(a, 'trial', credits, now, now + duration, false)
    return totals_fields({ 'ok', lot, now + duration }, a)
  end)
end)
