-- list.lua: an account's reservations, newest first, one page (ListReservations).
-- KEYS: the account's nine keys (see lib.lua).
-- ARGV[4]: {"size": 100, "scan": 10000, "before": 42, "state": "held"}   ("before", "state" optional;
--          "scan": the most sequence numbers to examine, so one call stays short)
-- Reply: {"done": {"page": [{...reservation...}, ...], "next": 17}}   ("next" absent on the last page)
--     or {"error": "account_not_found"}
-- Example: with reservations 1..5 and size 2: page [5, 4], next 4; then before 4: [3, 2], next 2.
return read(function(a, now)
  local page = arr()
  local seq = a.last_res
  if ARGS.before then seq = math.min(seq, ARGS.before - 1) end
  local scanned = 0
  while seq >= 1 do
    if scanned == ARGS.scan then return enc({ done = { page = page, next = seq + 1 } }) end
    scanned = scanned + 1
    local r = get_res(seq)
    if r and (ARGS.state == nil or r.state == ARGS.state) then
      if #page == ARGS.size then return enc({ done = { page = page, next = page[#page].seq } }) end
      page[#page + 1] = reservation_view(seq)
    end
    seq = seq - 1
  end
  return enc({ done = { page = page } })
end)
