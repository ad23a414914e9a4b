-- list.lua: an account's reservations, newest first, one page (ListReservations). Reads only
-- (no-writes; FCALL_RO). Examines at most `scan` sequence numbers, one reservation hash per HMGET.
-- KEYS: the account's 13 keys (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 page size, 5 scan, 6 before ("" for none), 7 state ("" for any)
-- Reply: {"ok", next | nil, <reservation view> x n}, {"err", "account_not_found"} or {"due"}.
-- Example: with reservations 1..5 and size 2: {"ok", 4, <5>, <4>}; then before 4: {"ok", 2, <3>, <2>}.
register('list', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS, 7, 'list')
  local size, scan, before, state = int(args[4]), int(args[5]), opt_int(args[6]), args[7]
  return read(function(a)
    local reply = { 'ok', false }
    local count = 0
    local seq = a.res
    if before then seq = math.min(seq, math.max(before - 1, 0)) end
    local scanned = 0
    while seq >= 1 do
      -- One reservation hash (RES_BUCKET reservations) per HMGET.
      local batch = math.min(seq % RES_BUCKET + 1, seq, scan - scanned)
      if batch == 0 then
        reply[2] = seq + 1
        return reply
      end
      local fields = {}
      for i = 0, batch - 1 do fields[#fields + 1] = 'm' .. (seq - i) end
      local found = redis.call('HMGET', res_key(seq), unpack(fields))
      for i = 0, batch - 1 do
        local text = found[i + 1]
        if text and (state == '' or string.match(text, '^%a+') == state) then
          if count == size then
            reply[2] = reply[#reply - 12] -- the seq of the last view on the page
            return reply
          end
          local r = get_res(seq - i)
          view_fields(reply, r)
          view_facts(reply, r)
          count = count + 1
        end
      end
      scanned = scanned + batch
      seq = seq - batch
    end
    return reply
  end)
end, true)
