-- sweep_account.lua: the background pass for one account: catch up (expire holds and lots,
-- renew the cycle) and forget closed reservations and request ids past retention
-- (Ledger::sweep, for one account).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"answers_prefix": "cs:{sN}:x:<account>:"}  (the reservations' answer hashes, by
--          seq; same hash slot as KEYS, so this runs on Redis Cluster too)
-- Reply: the number of holds that expired (integer).
-- Example: an account whose dialer died holds 4 past its deadline: the hold closes as expired
-- at its deadline, the 4 return to their lot, and 1 is returned.
local now = now_ms()
local a = load_account()
if a == nil then
  redis.call('ZREM', K_W, ACCOUNT)
  return 0
end
local open_before = redis.call('ZCARD', K_D)
catch_up(a, now)
local expired = open_before - redis.call('ZCARD', K_D)
-- At most 1000 purges per pass (the wake-up index brings the account back for the rest).
local due = redis.call('ZRANGEBYSCORE', K_P, '-inf', enc(now), 'LIMIT', 0, 1000)
for _, member in ipairs(due) do
  local id = string.sub(member, 3)
  if string.sub(member, 1, 1) == 'r' then
    -- The reservation goes, and with it the answers to calls on it (its own hash).
    redis.call('HDEL', K_R, id)
    redis.call('DEL', ARGS.answers_prefix .. string.format('%.0f', tonumber(id)))
  else
    redis.call('HDEL', K_Q, id)
  end
end
if #due > 0 then redis.call('ZREM', K_P, unpack(due)) end
save_account(a)
return expired
