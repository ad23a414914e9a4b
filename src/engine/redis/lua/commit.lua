-- commit.lua: move part of a hold to spent; `final` closes it and returns the rest
-- (Ledger::commit).
-- KEYS: the account's 12 keys, then the reservation's answer hash X (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 fingerprint, 6 seq, 7 amount, 8 final ("1" | "0"),
--       9 business key ("" for none), 10 labels (a JSON object)
-- Reply: {"ok", charged, already (1|0), held, returned, <reservation view>}, a decline
--        ("exceeds_hold" | "reservation_expired" | "reservation_closed", with the reservation's
--        view), {"err",
--        "account_not_found" | "reservation_not_found" | "request_id_reused"} or {"due"}.
-- Example: reservation 7 holds 50; a commit of 3 with a key not charged this cycle ->
-- {"ok", 3, 0, 47, 0, 7, "held", 50, 3, 47, 0, 1, <deadline>, nil, "ann", "email", <created>, "{}"}
-- and a "committed" event.
register('commit', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS + 1, 10, 'commit')
  local seq, amount, final, labels = int(args[6]), int(args[7]), args[8] == '1', args[10]
  local key = args[9] ~= '' and args[9] or nil
  return run({ request = args[4], fingerprint = args[5], seq = seq }, function(a, now, r)
    local declined = closed_decline(a, r, amount)
    if declined then return declined end
    local already = key_charged(key)
    local charge = already and 0 or amount
    if charge > held_of(r) then return reservation_decline(a, r, 'exceeds_hold', charge) end
    spend(a, now, r, charge, key, already, labels)
    local returned = 0
    if final then
      returned = close(a, r, 'committed', now)
    else
      put_res(r)
    end
    local reply = { 'ok', charge, already and 1 or 0, held_of(r), returned }
    view_fields(reply, r)
    return reply
  end)
end)
