-- set_user_limit.lua: cap what one user may hold or spend per cycle, or lift the cap
-- (Ledger::set_user_limit).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"request": "r-9", "user": "ann", "limit": 500}          ("limit" absent: no cap)
-- Reply: {"done": {"user": "ann", "limit": 500, "used": 120, "remaining": 380}}
--     or {"error": "account_not_found" | "request_id_reused"}
-- Example: ann has held or spent 120 this cycle; a cap of 500 leaves her 380.
return run({ request = ARGS.request }, function(a, now)
  local u = get_user(ARGS.user) or { used = 0 }
  u.limit = ARGS.limit
  put_user(ARGS.user, u)
  emit(a, now, 'user_limit_set', { user = ARGS.user, limit = ARGS.limit })
  return { done = user_view(ARGS.user) }
end)
