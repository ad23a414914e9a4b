-- balance.lua: the account's totals and cycle, and one user's view, for GetBalance and Quote.
-- Reads only (no-writes; FCALL_RO).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 user ("" for none), 5 category ("" for none)
-- Reply: {"ok", cycle start, cycle end, <totals>[, user, limit | nil, used, remaining | nil]
--        [, category, budget | nil, used, remaining | nil]}, {"err", "account_not_found"} or
--        {"due"}.
-- Example: 1000 granted, 50 held, 3 spent -> {"ok", cs, ce, 1000, 947, 50, 3, 0}.
register('balance', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 5, 'balance')
  local user, category = args[4], args[5]
  return read(function(a)
    cold(a)
    local reply = totals_fields({ 'ok', a.cs, a.ce }, a)
    if user ~= '' then user_fields(reply, user, get_user(a, user)) end
    if category ~= '' then user_fields(reply, category, get_category(a, category)) end
    return reply
  end)
end, true)
