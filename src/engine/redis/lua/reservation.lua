-- reservation.lua: one reservation, as of now (GetReservation). Reads only (no-writes; FCALL_RO).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 seq
-- Reply: {"ok", <reservation view>}, {"err", "account_not_found" | "reservation_not_found"} or
--        {"due"} (a hold past its deadline is expired by the catch-up first).
-- Example: {"ok", 7, "held", 50, 3, 47, 0, 1, <deadline>, nil, "ann", "email", <created>, "{}"}.
register('reservation', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 4, 'reservation')
  local seq = int(args[4])
  return read(function()
    local r = get_res(seq)
    if r == nil then return err('reservation_not_found') end
    local reply = { 'ok' }
    view_fields(reply, r)
    view_facts(reply, r)
    return reply
  end)
end, true)
