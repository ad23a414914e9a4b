-- set_category_budget.lua: cap what one category of work may hold or spend per cycle for the
-- team, or lift the cap (Ledger::set_category_budget).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 category, 7 budget ("" for no cap)
-- Reply: {"ok", category, budget | nil, used, remaining | nil}, {"err", "account_not_found" |
--        "request_id_reused"} or {"due"}.
-- Example: "ai" has held or spent 80 this cycle; a budget of 100 -> {"ok", "ai", 100, 80, 20}.
register('set_category_budget', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 7, 'set_category_budget')
  local category, budget = args[6], opt_int(args[7])
  return run({ request = args[4], stamp = args[5] }, function(a, now)
    local c = get_category(a, category) or { used = 0 }
    c.limit = budget
    put_category(a, category, c)
    local budget_json = budget and string.format(',"budget":%d', budget) or ''
    emit(a, now, 'category_budget_set', string.format('{"category":%s%s}', cjson.encode(category), budget_json))
    local reply = { 'ok' }
    user_fields(reply, category, c)
    return reply
  end)
end)
