-- commit.lua: move part of a hold to spent; `final` closes it and returns the rest
-- (Ledger::commit).
-- KEYS: the account's 13 keys, then the reservation's answer hash X (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 request id, 5 stamp (lib.lua), 6 seq, 7 amount, 8 final ("1" | "0"),
--       9 business key ("" for none), 10 labels (a JSON object)
-- Reply: {"ok", charged, already (1|0), held, returned, <reservation view>}, a decline
--        ("exceeds_hold" | "reservation_expired" | "reservation_closed", with the reservation's
--        view), {"err",
--        "account_not_found" | "reservation_not_found" | "request_id_reused"} or {"due"}.
-- Example: reservation 7 holds 50; a commit of 3 with a key not charged this cycle ->
-- {"ok", 3, 0, 47, 0, 7, "held", 50, 3, 47, 0, 1, <deadline>, nil, "ann", "email", <created>, "{}"}
-- and a "committed" event.
-- One commit's decision and its effects on `a` and `r` in memory (shared by commit and
-- commit_batch): the reply, a result or a decline. A final commit closes (and so writes) `r`;
-- otherwise the caller writes it (put_res) when the reply is "ok".
local function commit_step(a, now, r, amount, final, key, labels)
  local declined = closed_decline(a, r, amount)
  if declined then return declined end
  local already = key_charged(key)
  local charge = already and 0 or amount
  if charge > held_of(r) then return reservation_decline(a, r, 'exceeds_hold', charge) end
  spend(a, now, r, charge, key, already, labels)
  local returned = 0
  if final then returned = close(a, r, 'committed', now) end
  local reply = { 'ok', charge, already and 1 or 0, held_of(r), returned }
  view_fields(reply, r)
  return reply
end

register('commit', function(keys, args)
  bind(keys, args, ACCOUNT_KEYS + 1, 10, 'commit')
  local seq, amount, final, labels = int(args[6]), int(args[7]), args[8] == '1', args[10]
  local key = args[9] ~= '' and args[9] or nil
  return run({ request = args[4], stamp = args[5], seq = seq }, function(a, now, r)
    local reply = commit_step(a, now, r, amount, final, key, labels)
    if reply[1] == 'ok' and not final then put_res(r) end
    return reply
  end)
end)

-- commit_batch.lua: many commits on one reservation in one atomic step (Ledger::commit_batch):
-- each item is exactly a non-final Commit, its item id its request id (scoped to the
-- reservation, as a Commit's), applied in order: commit_step per item against one load of the
-- account and the reservation, which are written once a batch.
-- KEYS: the account's 13 keys, then the reservation's answer hash X (lib.lua).
-- ARGV: 1-3 (lib.lua), 4 seq, 5 item count n (1..=COMMIT_BATCH_MAX), then per item 5 fields:
--       item id, fingerprint (its Commit's), amount, business key ("" for none), labels (JSON)
-- Reply: {"batch", <reservation view after the batch>, <commit reply>, ...} one per item (see
--        above: a result, or a decline with the reservation's view; an item answered from memory
--        as first answered), or for the whole call {"err", "account_not_found" |
--        "reservation_not_found" | "request_id_reused", <1-based item>} or {"due"}: then nothing
--        changed.
-- Example: reservation 7 holds 50; items (row-1, 2), (row-2, 2) -> {"batch", {7, "held", 50, 4,
-- 46, ...}, {"ok", 2, 0, 48, 0, ...}, {"ok", 2, 0, 46, 0, ...}} and two "committed" events.
register('commit_batch', function(keys, args)
  local n = tonumber(args[5])
  assert(n ~= nil and n >= 1 and n <= COMMIT_BATCH_MAX, 'commit_batch: bad item count')
  bind(keys, args, ACCOUNT_KEYS + 1, 5 + 5 * n, 'commit_batch')
  local seq = int(args[4])
  -- One instant for every item, as the model runs them.
  NOW_ARG = string.format('%d', now_ms())
  -- Refusals of the whole call come before any write, in the model's order: an unknown
  -- reservation, then an item id taken by other parameters, before or earlier in this batch.
  if redis.call('HEXISTS', res_key(seq), 'm' .. seq) == 0 then return err('reservation_not_found') end
  local ids = {}
  for i = 1, n do ids[i] = args[1 + 5 * i] end
  local remembered = redis.call('HMGET', K_X, unpack(ids))
  local batch = {}
  for i = 1, n do
    local fingerprint = args[2 + 5 * i]
    local earlier = batch[ids[i]]
    if remembered[i] and string.sub(remembered[i], 1, #fingerprint + 1) ~= fingerprint .. SEP
      or earlier and earlier ~= fingerprint then
      return { 'err', 'request_id_reused', i }
    end
    batch[ids[i]] = fingerprint
  end
  -- Caught up once: every item has the same instant.
  local now = now_ms()
  local a = load_account()
  if a == nil then return err('account_not_found') end
  if not current(a, now) then return { 'due' } end
  local r = get_res(seq)
  local out, answers, stored, spent = { 'batch', false }, {}, {}, false
  for i = 1, n do
    local at = 1 + 5 * i
    local id, fingerprint = args[at], args[at + 1]
    local reply
    local known = answers[id] or remembered[i]
    if known then
      -- Answered before, or earlier in this batch (the same figures, checked above).
      reply = unpack_answer(string.sub(known, #fingerprint + 2))
    else
      REQUEST = id
      local key = args[at + 3] ~= '' and args[at + 3] or nil
      reply = commit_step(a, now, r, int(args[at + 2]), false, key, args[at + 4])
      spent = spent or reply[1] == 'ok'
      answers[id] = pack_answer(fingerprint, reply)
      stored[#stored + 1] = id
      stored[#stored + 1] = answers[id]
    end
    if has_view(reply) then view_facts(reply, r) end
    out[i + 2] = reply
  end
  if #stored > 0 then redis.call('HSET', K_X, unpack(stored)) end
  if spent then put_res(r) end
  save_account(a)
  local view = {}
  view_fields(view, r)
  view_facts(view, r)
  out[2] = view
  return out
end)
