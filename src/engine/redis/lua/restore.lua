-- restore.lua: replace an account's state with a snapshot rebuilt from the SQL ledger (the
-- `rebuild` command). Remembered request ids are not part of the ledger and are not restored.
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: the snapshot (src/ledger/snapshot.rs): {"account": "acme", "cs": ..., "ce": ..., "gen": 3,
--          "pg": 1000, "ag": 0, "plan": {...}, "lots": [...], "last_lot": 4, "last_res": 9,
--          "last_event": 31, "trial": false, "granted": ..., "held": ..., "spent": ..., "expired": ...,
--          "reservations": [{"seq": 9, "state": "held", "draws": [[4, 10]], ...}],
--          "users": {"ann": {"limit": 500, "used": 10}}, "keys": ["contact:1:mobile"]}
-- Reply: the number of reservations written.
-- Example: after Redis lost everything, `rebuild --account acme` writes acme's lots, open and
-- recent reservations, users and business keys exactly as the ledger's replay left them.
local s = ARGS
for _, key in ipairs({ K_A, K_R, K_D, K_Q, K_U, K_K, K_P }) do redis.call('DEL', key) end
local a = { plan = s.plan, cs = s.cs, ce = s.ce, gen = s.gen, pg = s.pg, ag = s.ag, lots = {},
  last_lot = s.last_lot, last_res = s.last_res, last_event = s.last_event, trial = s.trial,
  granted = s.granted, held = s.held, spent = s.spent, expired = s.expired }
for _, lot in ipairs(s.lots) do a.lots[lot.id] = lot end
for _, r in ipairs(s.reservations) do
  local seq = r.seq
  r.seq = nil
  local draws = arr()
  for _, d in ipairs(r.draws) do draws[#draws + 1] = arr({ d[1], d[2] }) end
  r.draws = draws
  put_res(seq, r)
  if r.state == 'held' then
    redis.call('ZADD', K_D, enc(r.deadline), seq_key(seq))
  else
    redis.call('ZADD', K_P, enc(r.closed + RETENTION), 'r:' .. seq_key(seq))
  end
end
for user, u in pairs(s.users) do put_user(user, u) end
for _, key in ipairs(s.keys) do redis.call('SADD', K_K, key) end
save_account(a)
return #s.reservations
