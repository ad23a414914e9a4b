-- account.lua: the whole account view for GetAccount (and verify). Reads only (no-writes;
-- FCALL_RO); its cost grows with the account's lots and users, as its answer does.
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua)
-- Reply: {"ok", cs, ce, trial (1|0), open holds, <totals>, plan period | nil, anchor | nil,
--         plan credits | nil, add-on credits | nil, n lots, (id, kind, granted, remaining,
--         granted_ms, expires) x n, n users, (user, limit | nil, used, remaining | nil) x n,
--         n categories, (category, budget | nil, used, remaining | nil) x n},
--        {"err", "account_not_found"} or {"due"}. Lots, users and categories in no particular
--        order.
-- Example: a plan of 1000 and one grant -> {"ok", cs, ce, 0, 0, 1500, 1500, 0, 0, 0, 1, anchor,
--          1000, 0, 2, 1, "plan", 1000, 1000, cs, ce, 2, "addon", 500, 500, t, ce, 0}.
register('account', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 3, 'account')
  return read(function(a)
    cold(a)
    local reply = { 'ok', a.cs, a.ce, a.trial, redis.call('ZCARD', K_D) }
    totals_fields(reply, a)
    local p = a.plan or {}
    for _, v in ipairs({ p.period or false, p.anchor or false, p.plan or false, p.addon or false }) do
      reply[#reply + 1] = v
    end
    local flat = redis.call('HGETALL', K_L)
    local lots = {}
    for i = 1, #flat, 2 do
      local id = tonumber(string.sub(flat[i], 2))
      lots[id] = lots[id] or {}
      if string.sub(flat[i], 1, 1) == 'm' then lots[id].meta = lot_meta(flat[i + 1]) else lots[id].remaining = tonumber(flat[i + 1]) end
    end
    local count = #reply + 1
    reply[count] = 0
    for id, lot in pairs(lots) do
      local m = lot.meta
      for _, v in ipairs({ id, m.kind, m.granted, lot.remaining, m.granted_ms, m.expires }) do reply[#reply + 1] = v end
      reply[count] = reply[count] + 1
    end
    flat = redis.call('HGETALL', K_U)
    reply[#reply + 1] = #flat / 2
    for i = 1, #flat, 2 do user_fields(reply, flat[i], get_user(a, flat[i])) end
    count = #reply + 1
    reply[count] = 0
    local cursor = '0'
    repeat
      local page = redis.call('HSCAN', K_A, cursor, 'MATCH', 'c:*', 'COUNT', 100)
      cursor = page[1]
      for i = 1, #page[2], 2 do
        user_fields(reply, string.sub(page[2][i], 3), parse_usage(a, page[2][i + 1]))
        reply[count] = reply[count] + 1
      end
    until cursor == '0'
    return reply
  end)
end, true)
