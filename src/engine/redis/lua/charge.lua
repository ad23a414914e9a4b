-- charge.lua: reserve and final-commit in one step (Ledger::charge).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 user, 7 category, 8 amount,
--       9 business key ("" for none), 10 labels (a JSON object), 11 overdraft ("1": an outage
--       charge, never declined: the lots give what they have, the rest is owed | "0")
-- Reply: {"ok", reservation seq | nil, charged, already (1|0), available, overdrawn}, a decline
--        ("insufficient_credit" | "user_limit_reached" | "category_budget_reached"), {"err", "account_not_found" |
--        "request_id_reused"} or {"due"}. (Replies remembered before overdrafts existed end at
--        available.)
-- Example: 1 credit leaves the lots; reservation 8 opens and closes committed at once (events
-- "reserved", "committed", "closed"); with a key already charged this cycle: {"ok", nil, 0, 1, ...}.
-- An outage charge of 5 with 3 available: reservation 8 charges the 3, the account owes 2
-- (events "reserved", "committed", "closed", "overdrawn"): {"ok", 8, 5, 0, 0, 2}.
register('charge', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 11, 'charge')
  local user, category, amount, labels = args[6], args[7], int(args[8]), args[10]
  local key = args[9] ~= '' and args[9] or nil
  local overdraft = args[11] == '1'
  return run({ request = args[4], stamp = args[5] }, function(a, now)
    if key_charged(key) then return { 'ok', false, 0, 1, a.avail, 0 } end
    local covered, u, c = amount, nil, nil
    if overdraft then
      covered = math.min(amount, a.avail)
    else
      local declined
      declined, u, c = admit(a, user, category, amount)
      if declined then return declined end
    end
    local seq = false
    if covered > 0 then
      local r = open_reservation(a, now, now, covered, user, category, labels, u, c)
      spend(a, now, r, covered, key, false, labels)
      close(a, r, 'committed', now)
      seq = r.seq
    end
    local overdrawn = amount - covered
    if overdrawn > 0 then overdraw(a, now, seq or 0, user, category, overdrawn, key, labels) end
    return { 'ok', seq, amount, 0, a.avail, overdrawn }
  end)
end)
