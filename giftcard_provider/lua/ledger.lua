#!lua name=giftcard_ledger___LIBRARY_DIGEST__
--[[
The gift card ledger (layout v2), as one Redis Functions library.

Why a library and not separate EVAL scripts: every money function must first
release the holds whose deadline has passed, and must keep the card, the
bucket's books and its event log in step in exactly the same way. A library
lets those rules live once (the helpers below), and Redis keeps it across
restarts with the data (RDB/AOF) while the store reloads it on "Function not found".

Each release runs its own library: the library's name and every function name
end in the digest of this text (giftcard_ledger_<digest>, gc_authorize_<digest>;
ledger_library.py writes it over the placeholder), so during a rolling deploy
the processes of two releases share one Redis and each calls its own code.

Layout (giftcard_provider/keys.py has the whole of it): cards live in 256
buckets; every key of a bucket carries the hash tag {b<bb>}, so a call touches
one slot. A card is one hash: its own fields, and per transaction t:<tx> (the
packed record), x:<n>, q:<tx>, r:<requestId>, o:<tx>:<k>, p:<tx>:<k>. The
bucket's `holds` (zset "<cardId>:<txId>" -> deadline), `events` (stream: the
journal and the outbox) and `books` (hash "<CUR>:<total>") are written by the
same call as the change they describe.

Conventions
  * Amounts are integer minor units of the card's currency ("12.50 BRL" is
    1250). Lua numbers are doubles, exact below 2^53; the Python side caps
    every amount and balance far below that, and so does to_minor here.
  * An amount arrives as two ARGVs, COEFFICIENT and SCALE (12.5 is "125", "1"):
    only the card knows its currency exponent, so the conversion to minor
    units, and the refusal of over-precise values, happen here.
  * Times are epoch milliseconds from Redis's own clock (TIME), never a
    worker's clock.
  * Every function reads and checks everything first and writes only after the
    last check: Redis does not roll back a function that stops halfway.
    The one exception is intended: releasing expired holds happens before the
    checks, because it is a change in its own right and makes money available.
  * Every rule a function relies on is checked here, even where Python
    checked it already (operation, amount, owner, token, deadlines); a rule
    that needs data the call does not carry refuses instead of skipping.
  * Replies are flat arrays of strings and integers. The first element is a
    status: "ok", "replay" (an idempotent repeat: the original result follows),
    or a refusal code that giftcard_provider/errors.py maps to an error.
--]]


local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers go back to Redis as plain digits ("%d"), never as "1e+14".
local function int(n)
  return string.format('%d', n)
end

local EXACT = 2 ^ 53  -- Lua numbers are doubles: integers below this are exact

-- The amount in minor units, or nil and the refusal: "invalid_amount" (not a
-- positive whole coefficient, or too large to be exact) or
-- "invalid_amount_precision" (finer than the currency).
local function to_minor(coefficient, scale, exponent)
  local c, s, e = tonumber(coefficient), tonumber(scale), tonumber(exponent)
  if not c or not s or c <= 0 or s < 0 or s ~= math.floor(s) then return nil, 'invalid_amount' end
  if s > e then return nil, 'invalid_amount_precision' end
  if c ~= math.floor(c) or c >= EXACT then return nil, 'invalid_amount' end
  local minor = c * (10 ^ (e - s))
  if minor >= EXACT then return nil, 'invalid_amount' end
  return minor
end

local function split(packed, separator)
  local parts, from = {}, 1
  while true do
    local at = string.find(packed, separator, from, true)
    if not at then
      parts[#parts + 1] = string.sub(packed, from)
      return parts
    end
    parts[#parts + 1] = string.sub(packed, from, at - 1)
    from = at + 1
  end
end

-- A card and the keys of its bucket, as one call sees them.
-- KEYS of every money call: card gc:{b<bb>}:card:<id>, holds, events, books of its bucket.
local function open_card(keys)
  local c = {key = keys[1], holds = keys[2], events = keys[3], books = keys[4]}
  c.id = string.match(c.key, ':card:([^:]+)$')
  return c
end

local function card_num(c, field)
  return tonumber(redis.call('HGET', c.key, field) or '0')
end

-- A transaction record (t:<tx>, keys.py) as a table; nil if there is none.
-- An operation other than D or C is returned as op = '?' (refused by every caller).
local function read_tx(c, tx_id)
  local packed = redis.call('HGET', c.key, 't:' .. tx_id)
  if not packed then return nil end
  local f = split(packed, '|')
  local n = function(i) return tonumber(f[i]) or 0 end
  if f[1] == 'D' then
    return {id = tx_id, op = 'Debit', value = n(2), date = f[3], deadline = tonumber(f[4]), held = n(5),
      settled = n(6), released = n(7), refunded = n(8), cancelled = 0, records = n(9)}
  elseif f[1] == 'C' then
    return {id = tx_id, op = 'Credit', value = n(2), date = f[3], settled = n(4), cancelled = n(5),
      held = 0, released = 0, refunded = 0, records = n(6)}
  end
  return {id = tx_id, op = '?'}
end

local function write_tx(c, t)
  local packed
  if t.op == 'Debit' then
    packed = table.concat({'D', int(t.value), t.date, int(t.deadline), int(t.held), int(t.settled),
      int(t.released), int(t.refunded), int(t.records)}, '|')
  else
    packed = table.concat({'C', int(t.value), t.date, int(t.settled), int(t.cancelled), int(t.records)}, '|')
  end
  redis.call('HSET', c.key, 't:' .. t.id, packed)
end

-- Running totals per currency (records.Books names them); `cur` is the card's currency.
local function book(c, total, delta)
  if delta ~= 0 then redis.call('HINCRBY', c.books, c.cur .. ':' .. total, int(delta)) end
end

local function move(c, available, held)
  if available ~= 0 then redis.call('HINCRBY', c.key, 'av', int(available)) end
  if held ~= 0 then redis.call('HINCRBY', c.key, 'hd', int(held)) end
  book(c, 'available', available)
  book(c, 'held', held)
end

-- The event log: one entry per change, with the card's balances after it and its
-- sequence number. Every entry has the same fields in the same order, so a stream
-- node stores their names once (events.py reads them).
local function event(c, kind, tx_id, ref, amount)
  local seq = redis.call('HINCRBY', c.key, 'seq', 1)
  local available, held = unpack(redis.call('HMGET', c.key, 'av', 'hd'))
  redis.call('XADD', c.events, '*', 'type', kind, 'card', c.id, 'tx', tx_id, 'ref', ref,
    'amount', int(amount), 'available', available, 'held', held, 'seq', seq, 'currency', c.cur)
  return seq
end

-- The card's Debits still holding money (field ho), as a list of ids.
local function open_holds(c)
  local ho = redis.call('HGET', c.key, 'ho')
  if not ho or ho == '' then return {} end
  return split(ho, ' ')
end

-- Take a Debit off the card's open holds and its bucket's holds. `ho` is cut with
-- string.find, not split: a card with thousands of open holds pays a memchr, not a Lua loop.
local function drop_hold(c, tx_id)
  local padded, needle = ' ' .. (redis.call('HGET', c.key, 'ho') or '') .. ' ', ' ' .. tx_id .. ' '
  local at = string.find(padded, needle, 1, true)
  while at do
    padded = string.sub(padded, 1, at) .. string.sub(padded, at + #needle)
    at = string.find(padded, needle, at, true)
  end
  local kept = string.sub(padded, 2, -2)
  if kept == '' then redis.call('HDEL', c.key, 'ho') else redis.call('HSET', c.key, 'ho', kept) end
  redis.call('ZREM', c.holds, c.id .. ':' .. tx_id)
end

-- A Debit whose hold was released to zero or cancelled in full no longer counts
-- against multipleRedemptions (released and refunded only grow: this happens once).
local function close_debit_if_void(c, before, t)
  if before < t.value and t.released + t.refunded >= t.value then
    redis.call('HINCRBY', c.key, 'od', -1)
  end
end

-- Append the k-th settlement or cancellation record of a transaction.
local function add_record(c, t, kind, oid, minor, at, request_id, reason)
  t.records = t.records + 1
  local name = t.id .. ':' .. int(t.records)
  redis.call('HSET', c.key, 'o:' .. name, table.concat({kind, oid, int(minor), int(at), reason}, '|'))
  if request_id ~= '' then redis.call('HSET', c.key, 'p:' .. name, request_id) end
end

-- Release what a Debit still holds once its deadline has passed: recorded as a
-- cancellation with reason "expired", so the Hub's GET sums still add up. A hold
-- expires once at most, so the record is deterministic (oid "<txId>-expired",
-- dated at the deadline): a read can show it before it is written (records.py).
-- Returns whether the deadline had passed and whether money was released.
local function release_if_due(c, t, at)
  if not t or t.op ~= 'Debit' or not t.deadline or t.deadline > at then return false, false end
  local held = t.held
  if held > 0 then
    local before = t.released + t.refunded
    t.held, t.released = 0, t.released + held
    add_record(c, t, 'c', t.id .. '-expired', held, t.deadline, '', 'expired')
    write_tx(c, t)
    move(c, held, -held)
    book(c, 'released', held)
    book(c, 'expired', held)
    close_debit_if_void(c, before, t)
    event(c, 'expire', t.id, t.id .. '-expired', held)
  end
  drop_hold(c, t.id)
  return true, held > 0
end

-- The card's Debits whose hold deadline has passed, earliest first. They are found
-- through the bucket's holds (the sweeper's list, "<cardId>:<txId>" by deadline),
-- so a call costs the bucket's due holds, which the sweeper keeps few, never the
-- card's open ones (a busy card may hold thousands). The record's own deadline
-- decides: an entry that disagrees with it (a hand edit) is left to the sweeper.
local function due_debits(c, at)
  local due, head = {}, c.id .. ':'
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', c.holds, '-inf', at)) do
    if string.sub(member, 1, #head) == head then
      local t = read_tx(c, string.sub(member, #head + 1))
      if t and t.op == 'Debit' and t.deadline and t.deadline <= at then due[#due + 1] = t end
    end
  end
  table.sort(due, function(a, b) return a.deadline < b.deadline end)
  return due
end

-- Release the card's holds past their deadline, earliest first: all of them
-- (limit nil), as every money call does, so that what a call sees as available
-- is what GET card reports; or at most `limit`, as the per-card sweep does.
-- Returns how many were released.
local function release_expired(c, at, limit)
  local due = due_debits(c, at)
  local released = 0
  for i, t in ipairs(due) do
    if limit and i > limit then break end
    local _, moved = release_if_due(c, t, at)
    if moved then released = released + 1 end
  end
  return released
end

-- True if `owner` is one of the identities the call names (ARGV from `first` on,
-- normalised by giftcard_provider/identity.py as the owner was when the card was made).
local function names_owner(owner, args, first)
  if not owner or owner == '' then return false end
  for i = first, #args do
    if args[i] == owner then return true end
  end
  return false
end

-- A later layout's migration marks a card before it copies it (field mv): from
-- then on this release changes nothing on it. The caller answers 503.
local function moving(c)
  return redis.call('HEXISTS', c.key, 'mv') == 1
end

local function card_usable(c, at)
  local status, from, to = unpack(redis.call('HMGET', c.key, 'st', 'from', 'to'))
  if status ~= 'active' then return 'card_' .. (status or 'missing') end
  if at < tonumber(from) then return 'card_not_yet_valid' end
  if at >= tonumber(to) then return 'card_expired' end
  return nil
end

-- Opens a money call on an existing card: nil and a refusal, or the card.
local function existing_card(keys)
  local c = open_card(keys)
  local cur, exponent = unpack(redis.call('HMGET', c.key, 'cur', 'exp'))
  if not cur then return nil, {'not_found'} end
  if moving(c) then return nil, {'card_moving'} end
  c.cur, c.exponent = cur, exponent
  return c
end

local function amount_refusal(c, refusal)
  if refusal == 'invalid_amount_precision' then return {refusal, c.cur, c.exponent} end
  return {refusal}
end

--[[ gc_create_card
KEYS[1] card gc:{b<bb>}:card:<id>; KEYS[2] its card list shard; KEYS[3] its code index shard;
KEYS[4] the bucket's events; KEYS[5] the bucket's books
ARGV[1] card id; ARGV[2] code digest (its index field)
ARGV[3] emission ms ("" = now, on Redis's clock); ARGV[4] expiring ms ("" = emission + ARGV[5])
ARGV[5] default validity ms; ARGV[6..] field/value pairs of the new card (must include cur)
Returns {"ok", createdMs, emissionMs, expiringMs} | {"card_exists"} | {"code_taken"} | {"invalid_window"}
The card, its place in the bucket's card list, its code index entry, the books'
card count and a "created" event: one call. The owner index lives in another
slot: store.py writes it after this call.
--]]
local function create_card(keys, args)
  local card, list, codes, events, books = unpack(keys)
  local id, digest = args[1], args[2]
  if redis.call('EXISTS', card) == 1 then return {'card_exists'} end
  if redis.call('HEXISTS', codes, digest) == 1 then return {'code_taken'} end
  local at = now_ms()
  local from = tonumber(args[3]) or at
  local to = tonumber(args[4]) or (from + tonumber(args[5]))
  if to <= from or to <= at then return {'invalid_window'} end
  local fields = {}
  for i = 6, #args do fields[#fields + 1] = args[i] end
  redis.call('HSET', card, 'av', 0, 'hd', 0, 'st', 'active', 'at', int(at), 'from', int(from), 'to', int(to),
    unpack(fields))
  redis.call('HSET', list, id, int(at))
  redis.call('HSET', codes, digest, id)
  local c = open_card({card, '', events, books})
  c.cur = redis.call('HGET', card, 'cur')
  book(c, 'cards', 1)
  event(c, 'created', '', '', 0)
  return {'ok', int(at), int(from), int(to)}
end

--[[ gc_discard_card: withdraw a card that was just created and could not be indexed
KEYS as gc_create_card; ARGV[1] card id, ARGV[2] code digest
Returns {"ok"} | {"not_found"} | {"in_use"}
Only a card that never had a transaction or a status change is withdrawn, so a
wrong call can never destroy a ledger. Its "discarded" event says it went.
--]]
local function discard_card(keys, args)
  local card, list, codes, events, books = unpack(keys)
  local cur, seq, ntx = unpack(redis.call('HMGET', card, 'cur', 'seq', 'ntx'))
  if not cur then return {'not_found'} end
  if seq ~= '1' or ntx then return {'in_use'} end
  local c = open_card({card, '', events, books})
  c.cur = cur
  event(c, 'discarded', '', '', 0)
  redis.call('DEL', card)
  redis.call('HDEL', list, args[1])
  if redis.call('HGET', codes, args[2]) == args[1] then redis.call('HDEL', codes, args[2]) end
  book(c, 'cards', -1)
  return {'ok'}
end

--[[ gc_authorize: create a Debit (hold) or Credit (load) transaction
KEYS: card, holds, events, books (open_card)
ARGV[1] new transaction id (used only if this is not a replay)
ARGV[2] operation "Debit" | "Credit" (anything else is refused)
ARGV[3] amount coefficient, ARGV[4] amount scale (see Conventions)
ARGV[5] requestId
ARGV[6] redemption token ("" = not given): a Debit must carry the card's
ARGV[7] hold lifetime ms
ARGV[8] order id ("" = not given)
ARGV[9] description ("" = not given), stored with the transaction
ARGV[10..] the identities the order names (e-mail, document), normalised: a
        Debit on a card restricted to its owner must name the owner
Returns {"ok"|"replay", txId, dateMs}
      | {"conflict", field} | {"not_found"} | {"card_moving"} | {"invalid_operation"} | {"invalid_amount"}
      | {"invalid_amount_precision", currency, exponent}
      | {"card_blocked"|"card_inactive"|"card_expired"|"card_not_yet_valid"}
      | {"token_required"} | {"token_mismatch"} | {"owner_mismatch"} | {"redemption_used"}
      | {"credit_used"} | {"insufficient_balance"} | {"balance_limit"}
      | {"id_taken"} (ARGV[1] names a transaction of the card already: the caller draws another)
--]]
local function authorize(keys, args)
  local tx_id, op, request_id, token, order_id, description = args[1], args[2], args[5], args[6], args[8], args[9]
  if op ~= 'Debit' and op ~= 'Credit' then return {'invalid_operation'} end
  local c, refused = existing_card(keys)
  if not c then return refused end
  local minor, refusal = to_minor(args[3], args[4], c.exponent)
  local seen = redis.call('HGET', c.key, 'r:' .. request_id)
  if seen then
    local old_id, old_op, old_minor = unpack(split(seen, '|'))
    if old_op ~= op then return {'conflict', 'operation'} end
    if minor == nil or tonumber(old_minor) ~= minor then return {'conflict', 'value'} end
    local old = read_tx(c, old_id)
    return {'replay', old_id, old and old.date or '0'}
  end
  if minor == nil then return amount_refusal(c, refusal) end
  if redis.call('HEXISTS', c.key, 't:' .. tx_id) == 1 then return {'id_taken'} end

  local at = now_ms()
  release_expired(c, at)
  local unusable = card_usable(c, at)
  if unusable then return {unusable} end
  local owner, restricted, card_token = unpack(redis.call('HMGET', c.key, 'own', 'ro', 'tk'))
  if token ~= '' and token ~= card_token then return {'token_mismatch'} end
  if op == 'Debit' then
    -- Spending needs the card's token (the Hub reads it from GET card) and, on a
    -- restricted card, the owner's identity: a call without them is refused, not waved through.
    if token == '' then return {'token_required'} end
    if restricted == '1' and not names_owner(owner, args, 10) then return {'owner_mismatch'} end
  end

  local available, held = card_num(c, 'av'), card_num(c, 'hd')
  local t
  if op == 'Debit' then
    if redis.call('HGET', c.key, 'mr') == '0' and card_num(c, 'od') > 0 then return {'redemption_used'} end
    if minor > available then return {'insufficient_balance'} end
    local deadline = at + tonumber(args[7])
    t = {id = tx_id, op = op, value = minor, date = int(at), deadline = deadline, held = minor, settled = 0,
      released = 0, refunded = 0, records = 0}
  else
    if redis.call('HGET', c.key, 'mc') == '0' and card_num(c, 'cr') > 0 then return {'credit_used'} end
    if available + held + minor > card_num(c, 'lim') then return {'balance_limit'} end
    t = {id = tx_id, op = op, value = minor, date = int(at), settled = 0, cancelled = 0, records = 0}
  end

  write_tx(c, t)
  local n = redis.call('HINCRBY', c.key, 'ntx', 1)
  redis.call('HSET', c.key, 'x:' .. int(n), tx_id, 'q:' .. tx_id, request_id,
    'r:' .. request_id, table.concat({tx_id, op, int(minor)}, '|'))
  if order_id ~= '' then redis.call('HSET', c.key, 'n:' .. tx_id, order_id) end
  if description ~= '' then redis.call('HSET', c.key, 'd:' .. tx_id, description) end
  if op == 'Debit' then
    move(c, -minor, minor)
    book(c, 'authorized', minor)
    redis.call('HINCRBY', c.key, 'od', 1)
    local ho = redis.call('HGET', c.key, 'ho')
    redis.call('HSET', c.key, 'ho', (ho and ho ~= '') and (ho .. ' ' .. tx_id) or tx_id)
    redis.call('ZADD', c.holds, int(t.deadline), c.id .. ':' .. tx_id)
    event(c, 'authorize', tx_id, tx_id, minor)
  else
    move(c, minor, 0)
    book(c, 'credited', minor)
    redis.call('HINCRBY', c.key, 'cr', 1)
    event(c, 'credit', tx_id, tx_id, minor)
  end
  return {'ok', tx_id, int(at)}
end

-- The opening shared by settle and cancel (ARGV: txId, oid, coefficient, scale, requestId):
-- the transaction must exist and be a Debit or a Credit; a repeat of the
-- requestId answers at once with the original; then the transaction's own hold
-- is released if its deadline has passed (whatever else is due), and the card's
-- other expired holds after it. Returns a reply to send back, or nil with the
-- card, the transaction, the amount in minor units and the time.
local function open_operation(kind, keys, args)
  local tx_id, request_id = args[1], args[5]
  local c, refused = existing_card(keys)
  if not c then return refused end
  local t = read_tx(c, tx_id)
  if not t then return {'not_found'} end
  if t.op == '?' then return {'invalid_operation'} end
  local minor, refusal = to_minor(args[3], args[4], c.exponent)
  for k = 1, t.records do
    local name = tx_id .. ':' .. int(k)
    if redis.call('HGET', c.key, 'p:' .. name) == request_id then
      local record = split(redis.call('HGET', c.key, 'o:' .. name) or '', '|')
      if record[1] == kind then
        if minor == nil or tonumber(record[3]) ~= minor then return {'conflict', 'value'} end
        return {'replay', record[2], record[3], record[4], c.exponent}
      end
    end
  end
  if minor == nil then return amount_refusal(c, refusal) end
  local at = now_ms()
  if t.op == 'Debit' then release_if_due(c, t, at) end
  release_expired(c, at)
  return nil, c, read_tx(c, tx_id), minor, at
end

local function close_operation(c, t, kind, args, minor, at)
  add_record(c, t, kind, args[2], minor, at, args[5], '')
  write_tx(c, t)
  return {'ok', args[2], int(minor), int(at), c.exponent}
end

--[[ gc_settle: capture (part of) what a Debit holds; for a Credit, record it as final
KEYS: card, holds, events, books (open_card)
ARGV[1] transaction id; ARGV[2] new settlement id; ARGV[3] coefficient; ARGV[4] scale; ARGV[5] requestId
Returns {"ok"|"replay", oid, minor, dateMs, exponent} | {"not_found"} | {"card_moving"} | {"conflict", "value"}
      | {"invalid_operation"} | {"invalid_amount"} | {"invalid_amount_precision", currency, exponent}
      | {"exceeds_settleable"}
--]]
local function settle(keys, args)
  local reply, c, t, minor, at = open_operation('s', keys, args)
  if reply then return reply end
  if t.op == 'Debit' then
    if minor > t.held then return {'exceeds_settleable'} end
    t.held, t.settled = t.held - minor, t.settled + minor
    move(c, 0, -minor)
    book(c, 'settled', minor)
    if t.held == 0 then drop_hold(c, t.id) end
    event(c, 'settle', t.id, args[2], minor)
  else
    if minor > t.value - t.settled - t.cancelled then return {'exceeds_settleable'} end
    t.settled = t.settled + minor
    event(c, 'settle_credit', t.id, args[2], minor)
  end
  return close_operation(c, t, 's', args, minor, at)
end

--[[ gc_cancel: release what a Debit still holds, then refund what was settled;
for a Credit, take the loaded value back out while the card still has it
KEYS: card, holds, events, books (open_card)
ARGV[1] transaction id; ARGV[2] new cancellation id; ARGV[3] coefficient; ARGV[4] scale; ARGV[5] requestId
Returns {"ok"|"replay", oid, minor, dateMs, exponent} | {"not_found"} | {"card_moving"} | {"conflict", "value"}
      | {"invalid_operation"} | {"invalid_amount"} | {"invalid_amount_precision", currency, exponent}
      | {"exceeds_cancellable"} | {"insufficient_balance"}
--]]
local function cancel(keys, args)
  local reply, c, t, minor, at = open_operation('c', keys, args)
  if reply then return reply end
  if t.op == 'Debit' then
    local before = t.released + t.refunded
    if minor > t.value - before then return {'exceeds_cancellable'} end
    local release = math.min(minor, t.held)
    local refund = minor - release
    if release > 0 then
      t.held, t.released = t.held - release, t.released + release
      move(c, release, -release)
      book(c, 'released', release)
      if t.held == 0 then drop_hold(c, t.id) end
      event(c, 'release', t.id, args[2], release)
    end
    if refund > 0 then
      t.refunded = t.refunded + refund
      move(c, refund, 0)
      book(c, 'refunded', refund)
      event(c, 'refund', t.id, args[2], refund)
    end
    close_debit_if_void(c, before, t)
  else
    if minor > t.value - t.cancelled then return {'exceeds_cancellable'} end
    if minor > card_num(c, 'av') then return {'insufficient_balance'} end
    t.cancelled = t.cancelled + minor
    move(c, -minor, 0)
    book(c, 'reversed', minor)
    event(c, 'reverse_credit', t.id, args[2], minor)
  end
  return close_operation(c, t, 'c', args, minor, at)
end

--[[ gc_expire_holds: release one card's holds past their deadline now
KEYS: card, holds, events, books (open_card)
ARGV[1] at most this many holds in this call
Returns {"ok", holdsReleased} | {"not_found"} | {"card_moving"} | {"invalid_limit"}
--]]
local function expire_holds(keys, args)
  local limit = tonumber(args[1])
  if not limit or limit < 1 then return {'invalid_limit'} end
  local c, refused = existing_card(keys)
  if not c then return refused end
  return {'ok', release_expired(c, now_ms(), limit)}
end

--[[ gc_sweep_bucket: the sweeper's call on one bucket: release its holds past their deadline
KEYS[1] the bucket's holds; KEYS[2] its events; KEYS[3] its books
ARGV[1] at most this many entries in this call (the sweeper calls again while one releases any)
Returns {"ok", holdsReleased, entriesLooked, movingCards}
The cards are derived from the hold entries ("<cardId>:<txId>": the card key is
this bucket's prefix and the id, the same slot). An entry whose transaction
disagrees (a hand edit) is put where its record says, or dropped if it holds nothing.
--]]
local function sweep_bucket(keys, args)
  local limit = tonumber(args[1])
  if not limit or limit < 1 then return {'invalid_limit'} end
  local holds = keys[1]
  local prefix = string.sub(holds, 1, #holds - #':holds')
  local at = now_ms()
  local released, moving_cards = 0, 0
  local due = redis.call('ZRANGEBYSCORE', holds, '-inf', at, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do
    local card_id, tx_id = string.match(member, '^([^:]+):(.+)$')
    local c = card_id and open_card({prefix .. ':card:' .. card_id, holds, keys[2], keys[3]})
    local cur = c and redis.call('HGET', c.key, 'cur')
    if not cur then
      redis.call('ZREM', holds, member)  -- no such card: nothing is held for it
    elseif moving(c) then
      moving_cards = moving_cards + 1  -- a later layout's migration takes it
    else
      c.cur, c.exponent = cur, redis.call('HGET', c.key, 'exp')
      local t = read_tx(c, tx_id)
      local passed, moved = release_if_due(c, t, at)
      if moved then released = released + 1 end
      if not passed then
        if t and t.op == 'Debit' and t.deadline and t.held > 0 then
          redis.call('ZADD', holds, int(t.deadline), member)
        else
          redis.call('ZREM', holds, member)
        end
      end
    end
  end
  return {'ok', released, #due, moving_cards}
end

--[[ gc_set_status: block, unblock or deactivate a card (an operator's action; moves no money)
KEYS: card, holds, events, books (open_card)
ARGV[1] new status "active" | "blocked" | "inactive"
ARGV[2] reason, recorded as sr
Returns {"ok", previousStatus, changedMs} | {"unchanged", status, statusChangedMs or ""}
      | {"not_found"} | {"card_moving"} | {"card_inactive"} | {"invalid_status"}
"inactive" is final: a deactivated card never becomes active or blocked again.
A card's status gates new transactions only: holds already taken stay
settleable and cancellable in every status.
--]]
local function set_status(keys, args)
  local status, reason = args[1], args[2]
  if status ~= 'active' and status ~= 'blocked' and status ~= 'inactive' then return {'invalid_status'} end
  local c, refused = existing_card(keys)
  if not c then return refused end
  local current, changed = unpack(redis.call('HMGET', c.key, 'st', 'sc'))
  if current == status then return {'unchanged', current, changed or ''} end
  if current == 'inactive' then return {'card_inactive'} end
  local at = now_ms()
  redis.call('HSET', c.key, 'st', status, 'sr', reason, 'sc', int(at))
  event(c, 'status', '', status, 0)
  return {'ok', current, int(at)}
end

-- The card's own fields (not its transactions), in the order records.py reads them.
local CARD_FIELDS = {'cur', 'exp', 'av', 'hd', 'st', 'sr', 'sc', 'own', 'rel', 'cap', 'ro', 'mr', 'mc',
  'at', 'from', 'to', 'l4', 'tk', 'lim', 'seq', 'od', 'cr', 'ntx', 'ho', 'mv'}

--[[ gc_read_card (read-only): a card's own fields plus what its expired holds will give back
KEYS[1] card; KEYS[2] the bucket's holds (derived from KEYS[1] if left out: the same slot)
Returns {"ok", nowMs, dueMinor, value of each CARD_FIELDS name ("" if absent)} | {"not_found"}
A hold past its deadline can no longer be settled (every money call releases
it first), so its amount is reported as available before the release is written.
--]]
local function read_card(keys, args)
  local c = open_card(keys)
  c.holds = keys[2] or (string.sub(c.key, 1, #c.key - #c.id - #':card:') .. ':holds')
  local values = redis.call('HMGET', c.key, unpack(CARD_FIELDS))
  if not values[1] then return {'not_found'} end
  local at = now_ms()
  local due = 0
  for _, t in ipairs(due_debits(c, at)) do due = due + t.held end
  local reply = {'ok', int(at), int(due)}
  for i = 1, #CARD_FIELDS do reply[#reply + 1] = values[i] or '' end
  return reply
end

--[[ gc_read_transactions (read-only): a page of a card's transaction ids, oldest first
KEYS[1] card; ARGV[1] start, ARGV[2] stop (0-based, inclusive, negative from the end, as LRANGE)
Returns {"ok", total, txId...} | {"not_found"}
--]]
local function read_transactions(keys, args)
  local exists, ntx = unpack(redis.call('HMGET', keys[1], 'cur', 'ntx'))
  if not exists then return {'not_found'} end
  local total = tonumber(ntx or '0')
  local start, stop = tonumber(args[1]), tonumber(args[2])
  if start < 0 then start = math.max(total + start, 0) end
  if stop < 0 then stop = total + stop end
  stop = math.min(stop, total - 1)
  local reply = {'ok', total}
  if start > stop then return reply end
  local names = {}
  for n = start + 1, stop + 1 do names[#names + 1] = 'x:' .. int(n) end
  for _, id in ipairs(redis.call('HMGET', keys[1], unpack(names))) do reply[#reply + 1] = id or '' end
  return reply
end

--[[ gc_read_transaction (read-only): one transaction
KEYS[1] card; ARGV[1] transaction id
Returns {"ok", nowMs, exponent, record, requestId, orderId, description, operation record...}
      | {"not_found"}  (records as "o" values, oldest first, each followed by its requestId)
--]]
local function read_transaction(keys, args)
  local c = open_card(keys)
  local tx_id = args[1]
  local exponent, packed, request_id, order_id, description = unpack(redis.call('HMGET', c.key, 'exp',
    't:' .. tx_id, 'q:' .. tx_id, 'n:' .. tx_id, 'd:' .. tx_id))
  if not exponent or not packed then return {'not_found'} end
  local reply = {'ok', int(now_ms()), exponent, packed, request_id or '', order_id or '', description or ''}
  local t = read_tx(c, tx_id)
  for k = 1, (t.records or 0) do
    local name = tx_id .. ':' .. int(k)
    local record, rid = unpack(redis.call('HMGET', c.key, 'o:' .. name, 'p:' .. name))
    reply[#reply + 1] = record or ''
    reply[#reply + 1] = rid or ''
  end
  return reply
end

--[[ gc_read_ledger (read-only): everything verify checks about one card, read at one instant
KEYS[1] card; KEYS[2] the bucket's holds
Returns {"ok", fields, holdScores} | {"not_found"}: every field of the card hash (a flat
field/value array) and, for each hold entry the card's open holds name, its deadline or "".
--]]
local function read_ledger(keys, args)
  local c = open_card(keys)
  local fields = redis.call('HGETALL', c.key)
  if #fields == 0 then return {'not_found'} end
  local scores = {}
  for _, tx_id in ipairs(open_holds(c)) do
    scores[#scores + 1] = tx_id
    scores[#scores + 1] = redis.call('ZSCORE', keys[2], c.id .. ':' .. tx_id) or ''
  end
  return {'ok', fields, scores}
end

--[[ gc_read_bucket (read-only): a bucket's books and the sum of its cards, at one instant
KEYS[1] the bucket's books; KEYS[2..] its card lists
Returns {"ok", books (flat field/value array), sums}: sums is a flat array of
"<CUR>:available", total, "<CUR>:held", total, "<CUR>:cards", count for the cards listed.
Reads every card of the bucket: an operator's check (verify), never a request path.
--]]
local function read_bucket(keys, args)
  local prefix = string.sub(keys[1], 1, #keys[1] - #':books')
  local sums, order = {}, {}
  local function add(name, n)
    if not sums[name] then sums[name] = 0; order[#order + 1] = name end
    sums[name] = sums[name] + n
  end
  for i = 2, #keys do
    for _, card_id in ipairs(redis.call('HKEYS', keys[i])) do
      local cur, available, held = unpack(redis.call('HMGET', prefix .. ':card:' .. card_id, 'cur', 'av', 'hd'))
      if cur then
        add(cur .. ':available', tonumber(available))
        add(cur .. ':held', tonumber(held))
        add(cur .. ':cards', 1)
      end
    end
  end
  local flat = {}
  for _, name in ipairs(order) do
    flat[#flat + 1] = name
    flat[#flat + 1] = int(sums[name])
  end
  return {'ok', redis.call('HGETALL', keys[1]), flat}
end

--[[ gc_import_card: the migration's write of one v1 card into its v2 bucket
KEYS[1] card; KEYS[2] its card list shard; KEYS[3] the bucket's holds; KEYS[4] events; KEYS[5] books
ARGV[1] card id; ARGV[2] created ms; ARGV[3] a JSON object: {"fields": {...the v2 card hash...},
"holds": {"<txId>": deadlineMs, ...}, "books": {"<total>": minor, ...}}
Returns {"ok"} | {"exists"}
Idempotent: a card already in its bucket is left as it is, so a killed migration resumes by
calling again. The card's books and an "imported" event (its balances, seq after the v1
journal's) are written with it, so the bucket's books equal the sum of its cards.
--]]
local function import_card(keys, args)
  local card, list, holds, events, books = unpack(keys)
  if redis.call('EXISTS', card) == 1 then return {'exists'} end
  local doc = cjson.decode(args[3])
  local flat = {}
  for name, value in pairs(doc.fields) do
    flat[#flat + 1] = name
    flat[#flat + 1] = tostring(value)
  end
  redis.call('HSET', card, unpack(flat))
  redis.call('HSET', list, args[1], args[2])
  local c = open_card({card, holds, events, books})
  c.cur = redis.call('HGET', card, 'cur')
  for tx_id, deadline in pairs(doc.holds) do
    redis.call('ZADD', holds, int(deadline), c.id .. ':' .. tx_id)
  end
  for total, minor in pairs(doc.books) do book(c, total, minor) end
  event(c, 'imported', '', '', 0)
  return {'ok'}
end

--[[ gc_v1_take: the migration's mark-and-read of one v1 card, in the card's v1 slot
KEYS[1] card gc:{C}:card; KEYS[2] transaction ids gc:{C}:txs; KEYS[3] requestId index
gc:{C}:requests; KEYS[4] journal gc:{C}:journal; KEYS[5] hold deadlines gc:{C}:holds
ARGV[1] what to record in movedTo ("v2")
Returns {"ok", cardFields, journalLast, holdIds, requestFields, tx1, tx2, ...} | {"not_found"}
where each tx is {txId, fields, settlements, cancellations}. The card is marked movedTo first,
so a v1 process changes nothing on it from then on (the v1 release refuses marked cards): what
this returns stays exact. journalLast is the last journal entry, for its balances.
--]]
local function v1_take(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return {'not_found'} end
  redis.call('HSET', keys[1], 'movedTo', args[1])
  local reply = {'ok', redis.call('HGETALL', keys[1]), redis.call('XREVRANGE', keys[4], '+', '-', 'COUNT', 1),
    redis.call('ZRANGE', keys[5], 0, -1, 'WITHSCORES'), redis.call('HGETALL', keys[3])}
  local prefix = string.sub(keys[1], 1, #keys[1] - #':card')
  for _, tx_id in ipairs(redis.call('LRANGE', keys[2], 0, -1)) do
    local tx_key = prefix .. ':tx:' .. tx_id
    reply[#reply + 1] = {tx_id, redis.call('HGETALL', tx_key), redis.call('LRANGE', tx_key .. ':settlements', 0, -1),
      redis.call('LRANGE', tx_key .. ':cancellations', 0, -1)}
  end
  return reply
end

--[[ gc_ping (read-only): proves the library is loaded and Redis runs Lua.
Returns the library's digest (the placeholder below, filled in by ledger_library.py).
--]]
local LIBRARY_DIGEST = '__LIBRARY_DIGEST__'
local function ping(keys, args)
  return LIBRARY_DIGEST
end

-- Every name ends in this release's digest (see the header).
local function register(name, callback, read_only)
  redis.register_function{function_name = name .. '_' .. LIBRARY_DIGEST, callback = callback,
    flags = read_only and {'no-writes'} or {}}
end
register('gc_create_card', create_card)
register('gc_discard_card', discard_card)
register('gc_authorize', authorize)
register('gc_settle', settle)
register('gc_cancel', cancel)
register('gc_expire_holds', expire_holds)
register('gc_sweep_bucket', sweep_bucket)
register('gc_set_status', set_status)
register('gc_import_card', import_card)
register('gc_v1_take', v1_take)
register('gc_read_card', read_card, true)
register('gc_read_transactions', read_transactions, true)
register('gc_read_transaction', read_transaction, true)
register('gc_read_ledger', read_ledger, true)
register('gc_read_bucket', read_bucket, true)
register('gc_ping', ping, true)
