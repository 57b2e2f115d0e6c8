#!lua name=giftcard_ledger_v1
--[[
The gift card ledger, as one Redis Functions library.

Why a library and not separate EVAL scripts: every money function must first
release the holds whose deadline has passed, and must append to the journal in
exactly the same way. A library lets those rules live once (the helpers
below), and Redis keeps it across restarts with the data (RDB/AOF) while the
store reloads it on "Function not found".

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
  * Replies are flat arrays of strings and integers. The first element is a
    status: "ok", "replay" (an idempotent repeat: the original result follows),
    or a refusal code that giftcard_provider/errors.py maps to an error.

Keys: every key of a card carries the card's hash tag, so a call touches one
slot. The functions receive the card's keys in KEYS; the only keys they derive
are transaction keys of the same card (KEYS[1] with ":card" replaced), needed
when an expired hold of a transaction the caller could not know about is
released. Layout: giftcard_provider/keys.py.
--]]

local HOLD_SCAN_LIMIT = 100  -- expired holds released per call; the sweeper catches up

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers go back to Redis as plain digits ("%d"), never as "1e+14".
local function int(n)
  return string.format('%d', n)
end

local function to_minor(coefficient, scale, exponent)
  local c, s, e = tonumber(coefficient), tonumber(scale), tonumber(exponent)
  if s > e then return nil end
  return c * (10 ^ (e - s))
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

-- Release holds past their deadline: each release is recorded as a
-- cancellation with reason "expired", so the Hub's GET sums still add up. A hold
-- expires once at most, so the record is deterministic (oid "<txId>-expired",
-- dated at the deadline): a read can show it before it is written (store.py).
local function release_expired(card_key, holds_key, journal_key, at)
  local due = redis.call('ZRANGEBYSCORE', holds_key, '-inf', at, 'LIMIT', 0, HOLD_SCAN_LIMIT)
  local prefix = card_prefix(card_key)
  for _, tx_id in ipairs(due) do
    local tx_key = prefix .. ':tx:' .. tx_id
    local held = hnum(tx_key, 'held')
    if held > 0 then
      local oid = tx_id .. '-expired'
      redis.call('HINCRBY', tx_key, 'held', int(-held))
      redis.call('HINCRBY', tx_key, 'released', int(held))
      redis.call('HINCRBY', card_key, 'held', int(-held))
      redis.call('HINCRBY', card_key, 'available', int(held))
      redis.call('RPUSH', tx_key .. ':cancellations',
        table.concat({oid, int(held), redis.call('HGET', tx_key, 'holdDeadlineMs'), '', 'expired'}, '|'))
      close_debit_if_void(card_key, tx_key)
      journal(journal_key, card_key, 'expire', tx_id, oid, held, at)
    end
    redis.call('ZREM', holds_key, tx_id)
  end
  return #due
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
  -- A caller of an older release still passes the two index keys and expects them written here:
  -- refuse it rather than create a card no code can find.
  if #keys ~= 1 then return {'wrong_keys'} end
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
  if seq ~= '0' or redis.call('EXISTS', keys[2]) == 1 then return {'in_use'} end
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
ARGV[2] operation "Debit" | "Credit"
ARGV[3] amount coefficient, ARGV[4] amount scale (see Conventions)
ARGV[5] requestId
ARGV[6] client e-mail ("" = not given), checked against a restricted card's owner when that is an e-mail
ARGV[7] redemption token ("" = not given)
ARGV[8] hold lifetime ms
ARGV[9] order id ("" = not given)
Returns {"ok"|"replay", txId, dateMs}
      | {"conflict", field} | {"not_found"} | {"invalid_amount_precision"}
      | {"card_blocked"|"card_inactive"|"card_expired"|"card_not_yet_valid"}
      | {"owner_mismatch"} | {"token_mismatch"} | {"redemption_used"}
      | {"credit_used"} | {"insufficient_balance"} | {"balance_limit"}
--]]
local function authorize(keys, args)
  local card, txs, requests, journal_key, holds, tx = unpack(keys)
  local tx_id, op, request_id = args[1], args[2], args[5]
  if redis.call('EXISTS', card) == 0 then return {'not_found'} end
  local minor = to_minor(args[3], args[4], redis.call('HGET', card, 'exponent'))
  local seen = redis.call('HGET', requests, request_id)
  if seen then
    local old_id, old_op, old_minor = string.match(seen, '^([^|]*)|([^|]*)|([^|]*)$')
    if old_op ~= op then return {'conflict', 'operation'} end
    if minor == nil or tonumber(old_minor) ~= minor then return {'conflict', 'value'} end
    return {'replay', old_id, redis.call('HGET', card_prefix(card) .. ':tx:' .. old_id, 'dateMs')}
  end
  if minor == nil then return {'invalid_amount_precision'} end

  local at = now_ms()
  release_expired(card, holds, journal_key, at)
  local refusal = card_usable(card, at)
  if refusal then return {refusal} end
  local owner, restricted, token = unpack(redis.call('HMGET', card, 'profileId', 'restrictedToOwner', 'token'))
  -- An owner that is not an e-mail address cannot be compared with the order's e-mail.
  if restricted == '1' and args[6] ~= '' and string.find(owner, '@', 1, true) and args[6] ~= owner then
    return {'owner_mismatch'}
  end
  if args[7] ~= '' and args[7] ~= token then return {'token_mismatch'} end

  local available, held = hnum(card, 'available'), hnum(card, 'held')
  if op == 'Debit' then
    if redis.call('HGET', card, 'multipleRedemptions') == '0' and hnum(card, 'openDebits') > 0 then
      return {'redemption_used'}
    end
    if minor > available then return {'insufficient_balance'} end
    local deadline = at + tonumber(args[8])
    redis.call('HSET', tx, 'id', tx_id, 'operation', op, 'value', int(minor), 'requestId', request_id,
      'dateMs', int(at), 'orderId', args[9], 'held', int(minor), 'settled', 0, 'released', 0,
      'refunded', 0, 'holdDeadlineMs', int(deadline))
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
    redis.call('HSET', tx, 'id', tx_id, 'operation', op, 'value', int(minor), 'requestId', request_id,
      'dateMs', int(at), 'orderId', args[9], 'settled', 0, 'cancelled', 0)
    redis.call('HINCRBY', card, 'available', int(minor))
    redis.call('HINCRBY', card, 'credits', 1)
    journal(journal_key, card, 'credit', tx_id, tx_id, minor, at)
  end
  redis.call('RPUSH', txs, tx_id)
  redis.call('HSET', requests, request_id, table.concat({tx_id, op, int(minor)}, '|'))
  return {'ok', tx_id, int(at)}
end

-- The opening shared by settle and cancel (ARGV: oid, coefficient, scale, requestId):
-- the transaction must exist; a repeat of the requestId answers at once with the
-- original; then expired holds are released. Returns a reply to send back, or
-- nil with the amount in minor units and the time.
local function open_operation(kind, card, tx, tx_requests, journal_key, holds, args)
  if redis.call('EXISTS', tx) == 0 then return {'not_found'} end
  local minor = to_minor(args[2], args[3], redis.call('HGET', card, 'exponent'))
  local seen = redis.call('HGET', tx_requests, kind .. ':' .. args[4])
  if seen then
    local oid, old_minor, at = string.match(seen, '^([^|]*)|([^|]*)|([^|]*)$')
    if minor == nil or tonumber(old_minor) ~= minor then return {'conflict', 'value'} end
    return {'replay', oid, old_minor, at, redis.call('HGET', card, 'exponent')}
  end
  if minor == nil then return {'invalid_amount_precision'} end
  local at = now_ms()
  release_expired(card, holds, journal_key, at)
  return nil, minor, at
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
Returns {"ok"|"replay", oid, minor, dateMs, exponent} | {"not_found"} | {"conflict", "value"}
      | {"invalid_amount_precision"} | {"exceeds_settleable"}
--]]
local function settle(keys, args)
  local card, tx, tx_requests, settlements, journal_key, holds = unpack(keys)
  local reply, minor, at = open_operation('settlement', card, tx, tx_requests, journal_key, holds, args)
  if reply then return reply end
  local oid = args[1]
  local tx_id, op, value = unpack(redis.call('HMGET', tx, 'id', 'operation', 'value'))
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
Returns {"ok"|"replay", oid, minor, dateMs, exponent} | {"not_found"} | {"conflict", "value"}
      | {"invalid_amount_precision"} | {"exceeds_cancellable"} | {"insufficient_balance"}
--]]
local function cancel(keys, args)
  local card, tx, tx_requests, cancellations, journal_key, holds = unpack(keys)
  local reply, minor, at = open_operation('cancellation', card, tx, tx_requests, journal_key, holds, args)
  if reply then return reply end
  local oid = args[1]
  local tx_id, op, value = unpack(redis.call('HMGET', tx, 'id', 'operation', 'value'))
  value = tonumber(value)
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
Returns {"ok", holdsReleased} | {"not_found"}
--]]
local function expire_holds(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return {'not_found'} end
  return {'ok', release_expired(keys[1], keys[3], keys[2], now_ms())}
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

--[[ gc_ping (read-only): proves the library is loaded and Redis runs Lua.
Returns the library's digest, which store.py writes over the placeholder when it loads the
library: a store that gets another digest back loads its own version (store.ensure_library).
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
      | {"not_found"} | {"card_inactive"} | {"invalid_status"}
"inactive" is final: a deactivated card never becomes active or blocked again.
A card's status gates new transactions only: holds already taken stay
settleable and cancellable in every status.
--]]
local function set_status(keys, args)
  local status, reason = args[1], args[2]
  if status ~= 'active' and status ~= 'blocked' and status ~= 'inactive' then return {'invalid_status'} end
  local current, changed = unpack(redis.call('HMGET', keys[1], 'status', 'statusChangedMs'))
  if not current then return {'not_found'} end
  if current == status then return {'unchanged', current, changed or ''} end
  if current == 'inactive' then return {'card_inactive'} end
  local at = now_ms()
  redis.call('HSET', keys[1], 'status', status, 'statusReason', reason, 'statusChangedMs', int(at))
  return {'ok', current, int(at)}
end

redis.register_function('gc_create_card', create_card)
redis.register_function('gc_discard_card', discard_card)
redis.register_function('gc_authorize', authorize)
redis.register_function('gc_settle', settle)
redis.register_function('gc_cancel', cancel)
redis.register_function('gc_expire_holds', expire_holds)
redis.register_function('gc_set_status', set_status)
redis.register_function{function_name = 'gc_read_card', callback = read_card, flags = {'no-writes'}}
redis.register_function{function_name = 'gc_read_operations', callback = read_operations, flags = {'no-writes'}}
redis.register_function{function_name = 'gc_ping', callback = ping, flags = {'no-writes'}}
