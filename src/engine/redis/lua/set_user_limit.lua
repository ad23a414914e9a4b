-- set_user_limit.lua: cap what one user may hold or spend per cycle, or lift the cap
-- (Ledger::set_user_limit).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 user, 7 limit ("" for no cap)
-- Reply: {"ok", user, limit | nil, used, remaining | nil}, {"err", "account_not_found" |
--        "request_id_reused"} or {"due"}.
-- Example: ann has held or spent 120 this cycle; a cap of 500 -> {"ok", "ann", 500, 120, 380}.
register('set_user_limit', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 7, 'set_user_limit')
  local user, limit = args[6], opt_int(args[7])
  return run({ request = args[4], stamp = args[5] }, function(a, now)
    local u = get_user(a, user) or { used = 0 }
    u.limit = limit
    put_user(a, user, u)
    local limit_json = limit and string.format(',"limit":%d', limit) or ''
    emit(a, now, 'user_limit_set', string.format('{"user":%s%s}', cjson.encode(user), limit_json))
    local reply = { 'ok' }
    user_fields(reply, user, u)
    return reply
  end)
end)
