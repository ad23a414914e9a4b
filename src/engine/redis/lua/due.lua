-- due.lua: which accounts of a shard need the sweep now (standalone; no lib.lua).
-- KEYS[1]: cs:{sN}:wake
-- ARGV[1]: now (Unix ms) or "" for Redis TIME   ARGV[2]: the most accounts to return
-- Reply: account ids whose wake-up time has come, soonest first.
-- Example: wake = {acme: 1000, globex: 5000}, now 2000, limit 100 -> {"acme"}.
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
