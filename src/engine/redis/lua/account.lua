-- account.lua: the account caught up to now, for GetBalance, GetAccount and Quote.
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"user": "ann", "users": true}   ("user": include that user's view; "users": list all)
-- Reply: {"done": {"cs": ..., "ce": ..., "plan": {...}, "totals": {...}, "lots": [...in burn order...],
--         "trial": false, "open": 2, "users": [...], "user": {...}}}
--     or {"error": "account_not_found"}
-- Example: after a renewal boundary passed unnoticed, the call renews first, then answers.
return read(function(a, now)
  local lots = arr()
  for _, lot in pairs(a.lots) do
    lots[#lots + 1] = { id = lot.id, kind = lot.kind, granted = lot.granted, remaining = lot.remaining,
      granted_ms = lot.granted_ms, expires = lot.expires }
  end
  table.sort(lots, burns_before)
  local users = arr()
  if ARGS.users then
    for _, user in ipairs(redis.call('HKEYS', K_U)) do users[#users + 1] = user_view(user) end
  end
  local view = { plan = a.plan, cs = a.cs, ce = a.ce, totals = totals(a), lots = lots, trial = a.trial,
    open = redis.call('ZCARD', K_D), users = users }
  if ARGS.user then view.user = user_view(ARGS.user) end
  return enc({ done = view })
end)
