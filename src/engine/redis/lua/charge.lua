-- charge.lua: reserve and final-commit in one step (Ledger::charge).
-- KEYS: the account's 12 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 fingerprint, 6 user, 7 category, 8 amount,
--       9 business key ("" for none), 10 labels (a JSON object)
-- Reply: {"ok", reservation seq | nil, charged, already (1|0), available}, a decline
--        ("insufficient_credit" | "user_limit_reached" | "category_budget_reached"), {"err", "account_not_found" |
--        "request_id_reused"} or {"due"}.
-- Example: 1 credit leaves the lots; reservation 8 opens and closes committed at once (events
-- "reserved", "committed", "closed"); with a key already charged this cycle: {"ok", nil, 0, 1, ...}.
register('charge', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 10, 'charge')
  local user, category, amount, labels = args[6], args[7], int(args[8]), args[10]
  local key = args[9] ~= '' and args[9] or nil
  return run({ request = args[4], fingerprint = args[5] }, function(a, now)
    if key_charged(key) then return { 'ok', false, 0, 1, a.avail } end
    local declined, u, c = admit(a, user, category, amount)
    if declined then return declined end
    local r = open_reservation(a, now, now, amount, user, category, labels, u, c)
    spend(a, now, r, amount, key, false, labels)
    close(a, r, 'committed', now)
    return { 'ok', r.seq, amount, 0, a.avail }
  end)
end)
