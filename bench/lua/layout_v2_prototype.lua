#!lua name=layout_v2_prototype
--[[
The writes of the planned v2 layout (docs/ledger-v2.md) for one typical card's life, to measure
what they cost in memory (bench/layout_v2.py). A prototype for measuring: it moves money without
checks, and the service never loads it.

Card hash fields: st status, cur currency, exp exponent, av available, hd held, seq journal
sequence, od open Debits, cr Credits, at created, from/to validity, own owner, rel relationName,
cap caption, ro/mr/mc restrictedToOwner/multipleRedemptions/multipleCredits, l4 code's last 4,
cd code digest, tk redemption token, lim balance limit, ntx transaction count; per transaction
t:<tx> "op|value|held|settled|released|refunded|deadline|date|records", x:<n> the n-th transaction's
id, q:<tx> its requestId, r:<requestId> "tx|op|minor"; per settlement or cancellation
o:<tx>:<n> "kind|minor|date|reason" and p:<tx>:<n> its requestId.
--]]

local function event(events, type_, card, tx, ref, amount, av, hd, seq)
  redis.call('XADD', events, '*', 'type', type_, 'card', card, 'tx', tx, 'ref', ref, 'amt', amount,
    'av', av, 'hd', hd, 'seq', seq)
end

local function card_id(card_key)
  return string.match(card_key, ':card:(.+)$')
end

local function create(keys, args)
  local card, cards, codes, events, books = unpack(keys)
  local id, at, to = args[1], args[2], args[3]
  -- LEAN (ARGV[13] == '1'): the cuts docs/ledger-v2.md lists: no stored token (derived from the id
  -- with a keyed hash), no 'from' when it equals 'at', no per-card balance limit (the caller's), a
  -- 16-hex code digest copy, and no zero counters until they are first incremented.
  if args[13] == '1' then
    redis.call('HSET', card, 'st', 'active', 'cur', args[4], 'exp', args[5], 'av', 0, 'hd', 0,
      'at', at, 'to', to, 'own', args[6], 'rel', args[7], 'cap', args[8],
      'ro', 0, 'mr', 1, 'mc', 1, 'l4', args[9], 'cd', string.sub(args[10], 1, 16))
  else
    redis.call('HSET', card, 'st', 'active', 'cur', args[4], 'exp', args[5], 'av', 0, 'hd', 0, 'seq', 0,
      'od', 0, 'cr', 0, 'at', at, 'from', at, 'to', to, 'own', args[6], 'rel', args[7], 'cap', args[8],
      'ro', 0, 'mr', 1, 'mc', 1, 'l4', args[9], 'cd', args[10], 'tk', args[11], 'lim', args[12], 'ntx', 0)
  end
  redis.call('HSET', cards, id, at)
  redis.call('HSET', codes, args[10], id)
  redis.call('HINCRBY', books, 'cards', 1)
  event(events, 'created', id, '', '', 0, 0, 0, 0)
  return 'ok'
end

local function add_transaction(card, tx, record, request_id, op, minor)
  local n = redis.call('HINCRBY', card, 'ntx', 1)
  redis.call('HSET', card, 't:' .. tx, record, 'x:' .. n, tx, 'q:' .. tx, request_id,
    'r:' .. request_id, tx .. '|' .. op .. '|' .. minor)
end

local function credit(keys, args)
  local card, events, books = unpack(keys)
  local tx, minor, rid, at = args[1], args[2], args[3], args[4]
  add_transaction(card, tx, table.concat({'C', minor, 0, 0, at, 0}, '|'), rid, 'C', minor)
  local av = redis.call('HINCRBY', card, 'av', minor)
  redis.call('HINCRBY', card, 'cr', 1)
  local seq = redis.call('HINCRBY', card, 'seq', 1)
  redis.call('HINCRBY', books, 'credited', minor)
  redis.call('HINCRBY', books, 'available', minor)
  event(events, 'credit', card_id(card), tx, tx, minor, av, redis.call('HGET', card, 'hd'), seq)
  return 'ok'
end

local function debit(keys, args)
  local card, holds, events, books = unpack(keys)
  local tx, minor, rid, at, deadline = args[1], args[2], args[3], args[4], args[5]
  add_transaction(card, tx, table.concat({'D', minor, minor, 0, 0, 0, deadline, at, 0}, '|'), rid, 'D', minor)
  local av = redis.call('HINCRBY', card, 'av', -minor)
  local hd = redis.call('HINCRBY', card, 'hd', minor)
  redis.call('HINCRBY', card, 'od', 1)
  local seq = redis.call('HINCRBY', card, 'seq', 1)
  redis.call('ZADD', holds, deadline, card_id(card) .. ':' .. tx)
  redis.call('HINCRBY', books, 'authorized', minor)
  redis.call('HINCRBY', books, 'available', -minor)
  redis.call('HINCRBY', books, 'held', minor)
  event(events, 'authorize', card_id(card), tx, tx, minor, av, hd, seq)
  return 'ok'
end

local function settle(keys, args)
  local card, holds, events, books = unpack(keys)
  local tx, minor, rid, at = args[1], args[2], args[3], args[4]
  local op, value, held, settled, released, refunded, deadline, date, records =
    string.match(redis.call('HGET', card, 't:' .. tx), '^(%a)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)$')
  records = tonumber(records) + 1
  redis.call('HSET', card, 't:' .. tx,
    table.concat({op, value, held - minor, settled + minor, released, refunded, deadline, date, records}, '|'),
    'o:' .. tx .. ':' .. records, table.concat({'s', minor, at, ''}, '|'), 'p:' .. tx .. ':' .. records, rid)
  local hd = redis.call('HINCRBY', card, 'hd', -minor)
  local seq = redis.call('HINCRBY', card, 'seq', 1)
  redis.call('ZREM', holds, card_id(card) .. ':' .. tx)
  redis.call('HINCRBY', books, 'settled', minor)
  redis.call('HINCRBY', books, 'held', -minor)
  event(events, 'settle', card_id(card), tx, tx .. ':' .. records, minor, redis.call('HGET', card, 'av'), hd, seq)
  return 'ok'
end

-- The sweeper's pass over one bucket: release its holds past their deadline (at most ARGV[2]).
-- KEYS: the bucket's holds, events and books; card hashes are derived from the members (same slot).
local function sweep_bucket(keys, args)
  local holds, events, books = unpack(keys)
  local prefix = string.sub(holds, 1, #holds - #':holds')
  local due = redis.call('ZRANGEBYSCORE', holds, '-inf', args[1], 'LIMIT', 0, tonumber(args[2]))
  for _, member in ipairs(due) do
    local id, tx = string.match(member, '^(.+):(.+)$')
    local card = prefix .. ':card:' .. id
    local op, value, held, settled, released, refunded, deadline, date, records =
      string.match(redis.call('HGET', card, 't:' .. tx), '^(%a)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)$')
    held = tonumber(held)
    records = tonumber(records) + 1
    redis.call('HSET', card, 't:' .. tx,
      table.concat({op, value, 0, settled, released + held, refunded, deadline, date, records}, '|'),
      'o:' .. tx .. ':' .. records, table.concat({'c', held, deadline, 'expired'}, '|'))
    local av = redis.call('HINCRBY', card, 'av', held)
    local hd = redis.call('HINCRBY', card, 'hd', -held)
    local seq = redis.call('HINCRBY', card, 'seq', 1)
    redis.call('ZREM', holds, member)
    redis.call('HINCRBY', books, 'expired', held)
    redis.call('HINCRBY', books, 'available', held)
    redis.call('HINCRBY', books, 'held', -held)
    event(events, 'expire', id, tx, tx .. ':' .. records, held, av, hd, seq)
  end
  return #due
end

redis.register_function('proto_create', create)
redis.register_function('proto_sweep_bucket', sweep_bucket)
redis.register_function('proto_credit', credit)
redis.register_function('proto_debit', debit)
redis.register_function('proto_settle', settle)
