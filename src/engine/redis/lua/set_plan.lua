-- set_plan.lua: put an account on a plan, creating it if needed (Ledger::set_plan).
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 period (months: 1, 3, 6 or 12),
--       7 anchor (Unix ms), 8 plan credits, 9 add-on credits
-- Reply: {"ok", cycle start, cycle end, <totals>}, {"err", "balance:plan_credits" |
--        "request_id_reused"} or {"due"}.
-- Example: same period and anchor as before: increases are granted at once for the rest of the
-- cycle, decreases wait for renewal. Otherwise the plan's lots expire now and the cycle
-- containing now (under the new schedule) starts with fresh lots.
register('set_plan', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 9, 'set_plan')
  local new = { period = int(args[6]), anchor = int(args[7]), plan = int(args[8]), addon = int(args[9]) }
  return run({ request = args[4], stamp = args[5], create = true }, function(a, now)
    cold(a)
    local old = a.plan
    local same = old ~= nil and old.period == new.period and old.anchor == new.anchor
    local plan_grant, addon_grant = new.plan, new.addon
    if same then
      -- Only what this cycle has not had yet: lowering then raising the plan grants nothing twice.
      plan_grant = math.max(0, new.plan - a.pg)
      addon_grant = math.max(0, new.addon - a.ag)
    end
    if not check_balance(a, plan_grant + addon_grant) then return nil, 'balance:plan_credits' end
    -- After this point the plan is set.
    a.plan = new
    save_plan(a)
    local plan_json = string.format('{"period":%d,"anchor":%d,"plan":%d,"addon":%d}', new.period, new.anchor, new.plan,
      new.addon)
    if same then
      emit(a, now, 'plan_set', string.format('{"plan":%s,"cs":%d,"ce":%d}', plan_json, a.cs, a.ce))
      grant_plan_lots(a, plan_grant, addon_grant, now)
    else
      -- The plan's lots end now, in id order.
      local ids = {}
      for _, member in ipairs(redis.call('ZRANGE', K_E, 0, -1)) do ids[#ids + 1] = tonumber(member) end
      table.sort(ids)
      for _, id in ipairs(ids) do
        if lot_meta(redis.call('HGET', K_L, 'm' .. id)).from_plan then expire_lot(a, id, now) end
      end
      local cs, ce = cycle_containing(new.anchor, new.period, now)
      emit(a, now, 'plan_set', string.format('{"plan":%s,"cs":%d,"ce":%d}', plan_json, cs, ce))
      start_cycle(a, cs, ce)
    end
    return totals_fields({ 'ok', a.cs, a.ce }, a)
  end)
end)
