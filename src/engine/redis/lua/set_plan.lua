-- set_plan.lua: put an account on a plan, creating it if needed (Ledger::set_plan).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"request": "r-6", "plan": {"period": 1, "anchor": 1769817600000, "plan": 1000,
--           "addon": 0}}                                  (period in months: 1, 3, 6 or 12)
-- Reply: {"done": {"cs": <cycle start>, "ce": <cycle end>, "totals": {...}}}
--     or {"error": "balance:plan_credits" | "request_id_reused"}
-- Example: same period and anchor as before: increases are granted at once for the rest of the
-- cycle, decreases wait for renewal. Otherwise the plan's lots expire now and the cycle
-- containing now (under the new schedule) starts with fresh lots.
return run({ request = ARGS.request, create = true }, function(a, now)
  local new, old = ARGS.plan, a.plan
  local same = old ~= nil and old.period == new.period and old.anchor == new.anchor
  local plan_grant, addon_grant = new.plan, new.addon
  if same then
    -- Only what this cycle has not had yet: lowering then raising the plan grants nothing twice.
    plan_grant = math.max(0, new.plan - a.pg)
    addon_grant = math.max(0, new.addon - a.ag)
  end
  if not check_balance(a, plan_grant + addon_grant) then return nil, 'balance:plan_credits' end
  a.plan = new
  if same then
    emit(a, now, 'plan_set', { plan = new, cs = a.cs, ce = a.ce })
    grant_plan_lots(a, plan_grant, addon_grant, now)
  else
    for _, id in ipairs(sorted_lot_ids(a)) do
      if a.lots[id].from_plan then expire_lot(a, id, now) end
    end
    local cs, ce = cycle_containing(new.anchor, new.period, now)
    emit(a, now, 'plan_set', { plan = new, cs = cs, ce = ce })
    start_cycle(a, cs, ce)
  end
  return { done = { cs = a.cs, ce = a.ce, totals = totals(a) } }
end)
