#!lua name=giftcard_ledger___LIBRARY_DIGEST__
--[[
The gift card ledger, as one Redis Functions library.

Why a library and not separate EVAL scripts: every money function must first
release the holds whose deadline has passed, and must append to the journal in
exactly the same way. A library lets those rules live once (the helpers
below), and Redis keeps it across restarts with the data (RDB/AOF) while the
store reloads it on "Function not found".

Each release runs its own library: the library's name and every function name
end in the digest of this text (giftcard_ledger_<digest>, gc_authorize_<digest>;
ledger_library.py writes it over the placeholder), so during a rolling deploy
the processes of two releases share one Redis and each calls its own code.

Conventions
  * Amounts are integer minor units of the card's currency ("12.50 BRL" is
    1250). Lua numbers are doubles, exact below 2^53; the Python side caps
    every amount and balance far below that.
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

Keys: every key of a card carries the card's hash tag, so a call touches one
slot. The functions receive the card's keys in KEYS; the only keys they derive
are transaction keys of the same card (KEYS[1] with ":card" replaced), needed
when an expired hold of a transaction the caller could not know about is
released. Layout: giftcard_provider/keys.py.
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
-- "invalid_amount_precision" (finer than the currency). The coefficient is
-- converted only when the scale fits the currency (at most 4 decimals).
local function to_minor(coefficient, scale, exponent)
  local c, s, e = tonumber(coefficient), tonumber(scale), tonumber(exponent)
  if not c or not s or c <= 0 or s < 0 or s ~= math.floor(s) then return nil, 'invalid_amount' end
  if s > e then return nil, 'invalid_amount_precision' end
  if c ~= math.floor(c) or c >= EXACT then return nil, 'invalid_amount' end
  local minor = c * (10 ^ (e - s))
  if minor >= EXACT then return nil, 'invalid_amount' end
  return minor
end

-- A refusal of an amount, with what the caller needs to say why: the card's
-- currency and exponent for an over-precise one ("USD amounts have at most 2 decimals").
local function amount_refusal(card_key, refusal)
  if refusal == 'invalid_amount_precision' then
    local currency, exponent = unpack(redis.call('HMGET', card_key, 'currency', 'exponent'))
    return {refusal, currency or '', exponent or ''}
  end
  return {refusal}
end

local function hnum(key, field)
  return tonumber(redis.call('HGET', key, field) or '0')
end

-- The prefix shared by all keys of one card: "gc:{<cardId}>" from "gc:{<id>}:card".
local function card_prefix(card_key)
  return string.sub(card_key, 1, #card_key - #':card')
end

-- Journal: one stream entry per money movement, with the balances after it.
local function journal(journal_key, card_key, kind, tx_id, ref, amount, at)
  local seq = redis.call('HINCRBY', card_key, 'seq', 1)
  redis.call('XADD', journal_key, '*',
    'seq', seq, 'kind', kind, 'tx', tx_id, 'ref', ref, 'amount', int(amount),
    'available', redis.call('HGET', card_key, 'available'),
    'held', redis.call('HGET', card_key, 'held'), 'at', int(at))
  return seq
end

-- A Debit whose remaining hold was released to zero or cancelled in full no
-- longer counts against multipleRedemptions.
local function close_debit_if_void(card_key, tx_key)
  if hnum(tx_key, 'released') + hnum(tx_key, 'refunded') >= hnum(tx_key, 'value')
      and redis.call('HGET', tx_key, 'void') ~= '1' then
    redis.call('HSET', tx_key, 'void', '1')
    redis.call('HINCRBY', card_key, 'openDebits', -1)
  end
end

-- Release what a Debit still holds once its deadline has passed: recorded as a
-- cancellation with reason "expired", so the Hub's GET sums still add up. A hold
-- expires once at most, so the record is deterministic (oid "<txId>-expired",
-- dated at the deadline): a read can show it before it is written (store.py).
-- Returns whether the transaction's deadline had passed (its hold is now gone),
-- and whether money was released.
local function release_if_due(card_key, holds_key, journal_key, tx_id, at)
  local tx_key = card_prefix(card_key) .. ':tx:' .. tx_id
  local deadline = tonumber(redis.call('HGET', tx_key, 'holdDeadlineMs'))
  if not deadline or deadline > at then return false, false end
  local held = hnum(tx_key, 'held')
  if held > 0 then
    local oid = tx_id .. '-expired'
    redis.call('HINCRBY', tx_key, 'held', int(-held))
    redis.call('HINCRBY', tx_key, 'released', int(held))
    redis.call('HINCRBY', card_key, 'held', int(-held))
    redis.call('HINCRBY', card_key, 'available', int(held))
    redis.call('RPUSH', tx_key .. ':cancellations', table.concat({oid, int(held), int(deadline), '', 'expired'}, '|'))
    close_debit_if_void(card_key, tx_key)
    journal(journal_key, card_key, 'expire', tx_id, oid, held, at)
  end
  redis.call('ZREM', holds_key, tx_id)
  return true, held > 0
end

-- Release the card's holds past their deadline, earliest first: all of them
-- (limit nil), as every money call does, so that what a call sees as available
-- is what GET card reports; or at most `limit`, as the sweeper does to keep
-- each of its calls short. Every entry looked at leaves the due range, so a
-- caller that repeats the call makes progress. Returns how many were released.
local function release_expired(card_key, holds_key, journal_key, at, limit)
  local due
  if limit then
    due = redis.call('ZRANGEBYSCORE', holds_key, '-inf', at, 'LIMIT', 0, limit)
  else
    due = redis.call('ZRANGEBYSCORE', holds_key, '-inf', at)
  end
  local prefix = card_prefix(card_key)
  local released = 0
  for _, tx_id in ipairs(due) do
    local passed, moved = release_if_due(card_key, holds_key, journal_key, tx_id, at)
    if moved then released = released + 1 end
    if not passed then
      -- Listed as due but its transaction disagrees (edited by hand?): no deadline means
      -- nothing to release; a later one is where the entry belongs.
      local deadline = redis.call('HGET', prefix .. ':tx:' .. tx_id, 'holdDeadlineMs')
      if deadline then
        redis.call('ZADD', holds_key, deadline, tx_id)
      else
        redis.call('ZREM', holds_key, tx_id)
      end
    end
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

-- An upgrade moving this card to a new layout marks it first (field movedTo): from then on this
-- release changes nothing on it, so no write can land in keys the move has already copied. The
-- caller answers 503; the Hub's retry reaches a process of the new release.
local function moving(card_key)
  return redis.call('HEXISTS', card_key, 'movedTo') == 1
end

local function card_usable(card_key, at)
  local status, from, to = unpack(redis.call('HMGET', card_key, 'status', 'emissionMs', 'expiringMs'))
  if status ~= 'active' then return 'card_' .. (status or 'missing') end
  if at < tonumber(from) then return 'card_not_yet_valid' end
  if at >= tonumber(to) then return 'card_expired' end
  return nil
end

--[[ gc_create_card
KEYS[1] card hash            gc:{C}:card
ARGV[1] card id
ARGV[2] emission ms ("" = now, on Redis's clock)
ARGV[3] expiring ms ("" = emission + ARGV[4])
ARGV[4] default validity ms
ARGV[5..] field/value pairs of the new card
Returns {"ok", createdMs, emissionMs, expiringMs} | {"card_exists"} | {"invalid_window"}
Card creation moves no money. The code and owner indexes live outside the
card's slot, so store.py writes them after this call (never before: an index
must not name a card that does not exist).
--]]
local function create_card(keys, args)
  if redis.call('EXISTS', keys[1]) == 1 then return {'card_exists'} end
  local at = now_ms()
  local from = tonumber(args[2]) or at
  local to = tonumber(args[3]) or (from + tonumber(args[4]))
  if to <= from or to <= at then return {'invalid_window'} end
  local fields = {}
  for i = 5, #args do fields[#fields + 1] = args[i] end
  redis.call('HSET', keys[1], 'id', args[1], 'available', 0, 'held', 0, 'seq', 0,
    'openDebits', 0, 'credits', 0, 'status', 'active', 'createdMs', int(at),
    'emissionMs', int(from), 'expiringMs', int(to), unpack(fields))
  return {'ok', int(at), int(from), int(to)}
end

--[[ gc_discard_card: withdraw a card that was just created and could not be indexed
KEYS[1] card hash gc:{C}:card; KEYS[2] transaction ids gc:{C}:txs
Returns {"ok"} | {"not_found"} | {"in_use"}
Only a card that never moved money and has no transactions is deleted, so a
wrong call can never destroy a ledger.
--]]
local function discard_card(keys, args)
  local seq = redis.call('HGET', keys[1], 'seq')
  if not seq then return {'not_found'} end
  if seq ~= '0' or redis.call('EXISTS', keys[2]) == 1 or moving(keys[1]) then return {'in_use'} end
  redis.call('DEL', keys[1])
  return {'ok'}
end

--[[ gc_authorize: create a Debit (hold) or Credit (load) transaction
KEYS[1] card hash            gc:{C}:card
KEYS[2] transaction ids      gc:{C}:txs          (list, oldest first)
KEYS[3] requestId index      gc:{C}:requests     (hash requestId -> "txId|op|minor")
KEYS[4] journal              gc:{C}:journal      (stream)
KEYS[5] hold deadlines       gc:{C}:holds        (zset txId -> deadline ms)
KEYS[6] new transaction      gc:{C}:tx:<ARGV[1]> (hash)
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
--]]
local function authorize(keys, args)
  local card, txs, requests, journal_key, holds, tx = unpack(keys)
  local tx_id, op, request_id, token, description = args[1], args[2], args[5], args[6], args[9]
  if op ~= 'Debit' and op ~= 'Credit' then return {'invalid_operation'} end
  if redis.call('EXISTS', card) == 0 then return {'not_found'} end
  if moving(card) then return {'card_moving'} end
  local minor, refusal = to_minor(args[3], args[4], redis.call('HGET', card, 'exponent'))
  local seen = redis.call('HGET', requests, request_id)
  if seen then
    local old_id, old_op, old_minor = string.match(seen, '^([^|]*)|([^|]*)|([^|]*)$')
    if old_op ~= op then return {'conflict', 'operation'} end
    if minor == nil or tonumber(old_minor) ~= minor then return {'conflict', 'value'} end
    return {'replay', old_id, redis.call('HGET', card_prefix(card) .. ':tx:' .. old_id, 'dateMs')}
  end
  if minor == nil then return amount_refusal(card, refusal) end

  local at = now_ms()
  release_expired(card, holds, journal_key, at)
  local unusable = card_usable(card, at)
  if unusable then return {unusable} end
  local owner, restricted, card_token = unpack(redis.call('HMGET', card, 'profileId', 'restrictedToOwner', 'token'))
  if token ~= '' and token ~= card_token then return {'token_mismatch'} end
  if op == 'Debit' then
    -- Spending needs the card's token (the Hub reads it from GET card) and, on a
    -- restricted card, the owner's identity: a call without them is refused, not waved through.
    if token == '' then return {'token_required'} end
    if restricted == '1' and not names_owner(owner, args, 10) then return {'owner_mismatch'} end
  end

  local available, held = hnum(card, 'available'), hnum(card, 'held')
  local fields = {'id', tx_id, 'operation', op, 'value', int(minor), 'requestId', request_id,
    'dateMs', int(at), 'orderId', args[8]}
  if description ~= '' then
    fields[#fields + 1] = 'description'
    fields[#fields + 1] = description
  end
  if op == 'Debit' then
    if redis.call('HGET', card, 'multipleRedemptions') == '0' and hnum(card, 'openDebits') > 0 then
      return {'redemption_used'}
    end
    if minor > available then return {'insufficient_balance'} end
    local deadline = at + tonumber(args[7])
    redis.call('HSET', tx, 'held', int(minor), 'settled', 0, 'released', 0, 'refunded', 0,
      'holdDeadlineMs', int(deadline), unpack(fields))
    redis.call('HINCRBY', card, 'available', int(-minor))
    redis.call('HINCRBY', card, 'held', int(minor))
    redis.call('HINCRBY', card, 'openDebits', 1)
    redis.call('ZADD', holds, int(deadline), tx_id)
    journal(journal_key, card, 'authorize', tx_id, tx_id, minor, at)
  else
    if redis.call('HGET', card, 'multipleCredits') == '0' and hnum(card, 'credits') > 0 then
      return {'credit_used'}
    end
    if available + held + minor > hnum(card, 'balanceLimit') then return {'balance_limit'} end
    redis.call('HSET', tx, 'settled', 0, 'cancelled', 0, unpack(fields))
    redis.call('HINCRBY', card, 'available', int(minor))
    redis.call('HINCRBY', card, 'credits', 1)
    journal(journal_key, card, 'credit', tx_id, tx_id, minor, at)
  end
  redis.call('RPUSH', txs, tx_id)
  redis.call('HSET', requests, request_id, table.concat({tx_id, op, int(minor)}, '|'))
  return {'ok', tx_id, int(at)}
end

-- The opening shared by settle and cancel (ARGV: oid, coefficient, scale, requestId):
-- the transaction must exist and be a Debit or a Credit; a repeat of the
-- requestId answers at once with the original; then the transaction's own hold
-- is released if its deadline has passed (whatever else is due), and the card's
-- other expired holds after it. Returns a reply to send back, or nil with the
-- transaction's id and operation, the amount in minor units and the time.
local function open_operation(kind, card, tx, tx_requests, journal_key, holds, args)
  local tx_id, op = unpack(redis.call('HMGET', tx, 'id', 'operation'))
  if not tx_id or redis.call('EXISTS', card) == 0 then return {'not_found'} end
  if moving(card) then return {'card_moving'} end
  if op ~= 'Debit' and op ~= 'Credit' then return {'invalid_operation'} end
  local minor, refusal = to_minor(args[2], args[3], redis.call('HGET', card, 'exponent'))
  local seen = redis.call('HGET', tx_requests, kind .. ':' .. args[4])
  if seen then
    local oid, old_minor, at = string.match(seen, '^([^|]*)|([^|]*)|([^|]*)$')
    if minor == nil or tonumber(old_minor) ~= minor then return {'conflict', 'value'} end
    return {'replay', oid, old_minor, at, redis.call('HGET', card, 'exponent')}
  end
  if minor == nil then return amount_refusal(card, refusal) end
  local at = now_ms()
  if op == 'Debit' then release_if_due(card, holds, journal_key, tx_id, at) end
  release_expired(card, holds, journal_key, at)
  return nil, tx_id, op, minor, at
end

-- The closing shared by settle and cancel: the record, its idempotency entry, the reply.
local function close_operation(kind, card, tx_requests, records, args, minor, at)
  local oid, request_id = args[1], args[4]
  redis.call('RPUSH', records, table.concat({oid, int(minor), int(at), request_id, ''}, '|'))
  redis.call('HSET', tx_requests, kind .. ':' .. request_id, table.concat({oid, int(minor), int(at)}, '|'))
  return {'ok', oid, int(minor), int(at), redis.call('HGET', card, 'exponent')}
end

--[[ gc_settle: capture (part of) what a Debit holds; for a Credit, record it as final
KEYS[1] card hash            gc:{C}:card
KEYS[2] transaction          gc:{C}:tx:T
KEYS[3] operation requestIds gc:{C}:tx:T:requests   (hash "settlement:<rid>" -> "oid|minor|ms")
KEYS[4] settlements          gc:{C}:tx:T:settlements (list "oid|minor|ms|requestId|")
KEYS[5] journal              gc:{C}:journal
KEYS[6] hold deadlines       gc:{C}:holds
ARGV[1] new settlement id; ARGV[2] coefficient; ARGV[3] scale; ARGV[4] requestId
Returns {"ok"|"replay", oid, minor, dateMs, exponent} | {"not_found"} | {"card_moving"} | {"conflict", "value"}
      | {"invalid_operation"} | {"invalid_amount"} | {"invalid_amount_precision", currency, exponent}
      | {"exceeds_settleable"}
--]]
local function settle(keys, args)
  local card, tx, tx_requests, settlements, journal_key, holds = unpack(keys)
  local reply, tx_id, op, minor, at = open_operation('settlement', card, tx, tx_requests, journal_key, holds, args)
  if reply then return reply end
  local oid, value = args[1], redis.call('HGET', tx, 'value')
  if op == 'Debit' then
    if minor > hnum(tx, 'held') then return {'exceeds_settleable'} end
    redis.call('HINCRBY', tx, 'held', int(-minor))
    redis.call('HINCRBY', tx, 'settled', int(minor))
    redis.call('HINCRBY', card, 'held', int(-minor))
    if hnum(tx, 'held') == 0 then redis.call('ZREM', holds, tx_id) end
    journal(journal_key, card, 'settle', tx_id, oid, minor, at)
  else
    if minor > tonumber(value) - hnum(tx, 'settled') - hnum(tx, 'cancelled') then
      return {'exceeds_settleable'}
    end
    redis.call('HINCRBY', tx, 'settled', int(minor))
    journal(journal_key, card, 'settle_credit', tx_id, oid, minor, at)
  end
  return close_operation('settlement', card, tx_requests, settlements, args, minor, at)
end

--[[ gc_cancel: release what a Debit still holds, then refund what was settled;
for a Credit, take the loaded value back out while the card still has it
KEYS[1] card hash            gc:{C}:card
KEYS[2] transaction          gc:{C}:tx:T
KEYS[3] operation requestIds gc:{C}:tx:T:requests      (hash "cancellation:<rid>" -> "oid|minor|ms")
KEYS[4] cancellations        gc:{C}:tx:T:cancellations (list "oid|minor|ms|requestId|reason")
KEYS[5] journal              gc:{C}:journal
KEYS[6] hold deadlines       gc:{C}:holds
ARGV[1] new cancellation id; ARGV[2] coefficient; ARGV[3] scale; ARGV[4] requestId
Returns {"ok"|"replay", oid, minor, dateMs, exponent} | {"not_found"} | {"card_moving"} | {"conflict", "value"}
      | {"invalid_operation"} | {"invalid_amount"} | {"invalid_amount_precision", currency, exponent}
      | {"exceeds_cancellable"} | {"insufficient_balance"}
--]]
local function cancel(keys, args)
  local card, tx, tx_requests, cancellations, journal_key, holds = unpack(keys)
  local reply, tx_id, op, minor, at = open_operation('cancellation', card, tx, tx_requests, journal_key, holds, args)
  if reply then return reply end
  local oid, value = args[1], tonumber(redis.call('HGET', tx, 'value'))
  if op == 'Debit' then
    local held, released, refunded = hnum(tx, 'held'), hnum(tx, 'released'), hnum(tx, 'refunded')
    if minor > value - released - refunded then return {'exceeds_cancellable'} end
    local release = math.min(minor, held)
    local refund = minor - release
    if release > 0 then
      redis.call('HINCRBY', tx, 'held', int(-release))
      redis.call('HINCRBY', tx, 'released', int(release))
      redis.call('HINCRBY', card, 'held', int(-release))
      redis.call('HINCRBY', card, 'available', int(release))
      if held == release then redis.call('ZREM', holds, tx_id) end
      journal(journal_key, card, 'release', tx_id, oid, release, at)
    end
    if refund > 0 then
      redis.call('HINCRBY', tx, 'refunded', int(refund))
      redis.call('HINCRBY', card, 'available', int(refund))
      journal(journal_key, card, 'refund', tx_id, oid, refund, at)
    end
    close_debit_if_void(card, tx)
  else
    if minor > value - hnum(tx, 'cancelled') then return {'exceeds_cancellable'} end
    if minor > hnum(card, 'available') then return {'insufficient_balance'} end
    redis.call('HINCRBY', tx, 'cancelled', int(minor))
    redis.call('HINCRBY', card, 'available', int(-minor))
    journal(journal_key, card, 'reverse_credit', tx_id, oid, minor, at)
  end
  return close_operation('cancellation', card, tx_requests, cancellations, args, minor, at)
end

--[[ gc_expire_holds: release a card's holds past their deadline now (the sweeper)
KEYS[1] card hash gc:{C}:card; KEYS[2] journal gc:{C}:journal; KEYS[3] hold deadlines gc:{C}:holds
ARGV[1] at most this many holds in this call (the sweeper calls again while a call releases some)
Returns {"ok", holdsReleased} | {"not_found"} | {"card_moving"} | {"invalid_limit"}
--]]
local function expire_holds(keys, args)
  local limit = tonumber(args[1])
  if not limit or limit < 1 then return {'invalid_limit'} end
  if redis.call('EXISTS', keys[1]) == 0 then return {'not_found'} end
  if moving(keys[1]) then return {'card_moving'} end
  return {'ok', release_expired(keys[1], keys[3], keys[2], now_ms(), limit)}
end

--[[ gc_read_card (read-only): a card's fields plus what its expired holds will give back
KEYS[1] card hash gc:{C}:card; KEYS[2] hold deadlines gc:{C}:holds
Returns {"ok", nowMs, dueMinor, field1, value1, ...} | {"not_found"}
A hold past its deadline can no longer be settled (every money call releases
it first), so its amount is reported as available before the release is written.
--]]
local function read_card(keys, args)
  local fields = redis.call('HGETALL', keys[1])
  if #fields == 0 then return {'not_found'} end
  local at = now_ms()
  local prefix = card_prefix(keys[1])
  local due = 0
  for _, tx_id in ipairs(redis.call('ZRANGEBYSCORE', keys[2], '-inf', at)) do
    due = due + hnum(prefix .. ':tx:' .. tx_id, 'held')
  end
  local reply = {'ok', int(at), int(due)}
  for _, v in ipairs(fields) do reply[#reply + 1] = v end
  return reply
end

--[[ gc_read_operations (read-only): a transaction's settlements or cancellations, with what
the caller needs to show a release its hold's deadline has made due but no call has written
KEYS[1] card hash gc:{C}:card; KEYS[2] transaction gc:{C}:tx:T; KEYS[3] records gc:{C}:tx:T:settlements
or gc:{C}:tx:T:cancellations
Returns {"ok", nowMs, exponent, held, holdDeadlineMs, record1, record2, ...} | {"not_found"}
(held and holdDeadlineMs are "" for a Credit)
--]]
local function read_operations(keys, args)
  local operation, held, deadline = unpack(redis.call('HMGET', keys[2], 'operation', 'held', 'holdDeadlineMs'))
  if not operation then return {'not_found'} end
  local reply = {'ok', int(now_ms()), redis.call('HGET', keys[1], 'exponent'), held or '', deadline or ''}
  for _, record in ipairs(redis.call('LRANGE', keys[3], 0, -1)) do reply[#reply + 1] = record end
  return reply
end

--[[ gc_read_ledger (read-only): everything verify checks about one card, read at one instant
KEYS[1] card hash gc:{C}:card; KEYS[2] transaction ids gc:{C}:txs; KEYS[3] requestId index
gc:{C}:requests; KEYS[4] journal gc:{C}:journal; KEYS[5] hold deadlines gc:{C}:holds
Returns {"ok", cardFields, journalEntries, holdIds, requestFields, tx1, tx2, ...} | {"not_found"}
where each tx is {txId, fields, settlements, cancellations} (fields as flat field/value arrays,
journal entries as XRANGE gives them). One call, so no write can land between two of its reads:
verify never reports a card half-way through a change. It reads the whole card: an operator's
tool, not a request path.
--]]
local function read_ledger(keys, args)
  local card = redis.call('HGETALL', keys[1])
  if #card == 0 then return {'not_found'} end
  local reply = {'ok', card, redis.call('XRANGE', keys[4], '-', '+'), redis.call('ZRANGE', keys[5], 0, -1),
    redis.call('HGETALL', keys[3])}
  local prefix = card_prefix(keys[1])
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

--[[ gc_set_status: block, unblock or deactivate a card (an operator's action; moves no money)
KEYS[1] card hash            gc:{C}:card
ARGV[1] new status "active" | "blocked" | "inactive"
ARGV[2] reason, recorded as statusReason
Returns {"ok", previousStatus, changedMs} | {"unchanged", status, statusChangedMs or ""}
      | {"not_found"} | {"card_moving"} | {"card_inactive"} | {"invalid_status"}
"inactive" is final: a deactivated card never becomes active or blocked again.
A card's status gates new transactions only: holds already taken stay
settleable and cancellable in every status.
--]]
local function set_status(keys, args)
  local status, reason = args[1], args[2]
  if status ~= 'active' and status ~= 'blocked' and status ~= 'inactive' then return {'invalid_status'} end
  local current, changed = unpack(redis.call('HMGET', keys[1], 'status', 'statusChangedMs'))
  if not current then return {'not_found'} end
  if moving(keys[1]) then return {'card_moving'} end
  if current == status then return {'unchanged', current, changed or ''} end
  if current == 'inactive' then return {'card_inactive'} end
  local at = now_ms()
  redis.call('HSET', keys[1], 'status', status, 'statusReason', reason, 'statusChangedMs', int(at))
  return {'ok', current, int(at)}
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
register('gc_set_status', set_status)
register('gc_read_card', read_card, true)
register('gc_read_operations', read_operations, true)
register('gc_read_ledger', read_ledger, true)
register('gc_ping', ping, true)
