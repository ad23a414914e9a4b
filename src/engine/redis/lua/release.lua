-- release.lua: close a reservation and return what is not committed (Ledger::release).
-- KEYS: the account's 13 keys, then the reservation's answer hash X (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 seq
-- Reply: {"ok", returned, <reservation view>}, a decline ("reservation_expired" |
--        "reservation_closed", with the reservation's view), {"err", "account_not_found" | "reservation_not_found" |
--        "request_id_reused"} or {"due"}.
-- Example: reservation 7 holds 47 after commits of 3: the 47 go back to the lots they came from
-- (to expired for lots already gone), and a "closed" event is appended.
register('release', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS + 1, 6, 'release')
  local seq = int(args[6])
  return run({ request = args[4], stamp = args[5], seq = seq }, function(a, now, r)
    local declined = closed_decline(a, r, 0)
    if declined then return declined end
    local returned = close(a, r, 'released', now)
    local reply = { 'ok', returned }
    view_fields(reply, r)
    return reply
  end)
end)
