-- Record what happened to the head event of one lane (endpoint x bucket) of a webhook endpoint
-- (webhook_worker.py), if the calling worker still holds the lane's lease and the lane's cursor is
-- still the one the worker read from (an operator's replay moves it: the worker then reads again).
--
-- KEYS[1] the endpoint's cursor hash: bucket -> "<stream id>|<ordinal or empty>"
-- KEYS[2] the endpoint's leases hash: bucket -> "<worker id>|<expires ms>"
-- KEYS[3] the endpoint's retry hash: bucket -> "<stream id>|<attempts>|<next attempt ms>|<last error>"
-- KEYS[4] the endpoint's stats hash (counters; the latency histogram)
-- KEYS[5] the endpoint's dead-letter stream
-- ARGV[1] worker id
-- ARGV[2] bucket
-- ARGV[3] the cursor the worker read from ("" when the lane had none)
-- ARGV[4] outcome:
--   delivered  the cursor moves to ARGV[5]; ARGV[6] the event's time (ms, Redis clock); ARGV[7] the
--              latency histogram's bounds in ms, comma-separated, ascending: "lat:<i>" counts the
--              latencies up to bound i (1-based), "lat:<#bounds + 1>" the rest; "lat_sum_ms" their sum
--   skipped    the cursor moves to ARGV[5] (events the endpoint's filter leaves out); ARGV[6], if
--              given: events the retention trimmed before this lane handled them, passed over now
--              (counted in "trimmed")
--   dead       the cursor moves to ARGV[5]; ARGV[6] the last attempt's failure kind; ARGV[7..] the dead
--              letter's fields (field, value, ...), appended to the dead-letter stream
--   retry      the cursor stays; ARGV[5] "<stream id>|<attempts>"; ARGV[6] the failure kind; ARGV[7]
--              delay before the next attempt (ms); ARGV[8] the error. Noted as
--              "<stream id>|<attempts>|<next attempt ms>|<cursor's stream id>|<error>": the retry holds
--              only while the cursor stays there (a replay moves it: the retry is then stale)
-- Returns {"ok", now ms} | {"lost"} (the lease lapsed or is another worker's: the lane is not ours)
--       | {"moved"} (the cursor is no longer ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, bucket, expected, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local lease = redis.call('HGET', KEYS[2], bucket)
if not lease then return {'lost'} end
local sep = string.find(lease, '|', 1, true)
if string.sub(lease, 1, sep - 1) ~= me or tonumber(string.sub(lease, sep + 1)) <= now then
  return {'lost'}
end
if (redis.call('HGET', KEYS[1], bucket) or '') ~= expected then return {'moved'} end

if outcome == 'retry' then
  local after = string.match(expected, '^[^|]*')
  redis.call('HSET', KEYS[3], bucket, ARGV[5] .. '|' .. tostring(now + tonumber(ARGV[7])) .. '|' .. after .. '|' .. ARGV[8])
  redis.call('HINCRBY', KEYS[4], 'fail:' .. ARGV[6], 1)
  return {'ok', tostring(now)}
end

redis.call('HSET', KEYS[1], bucket, ARGV[5])
redis.call('HDEL', KEYS[3], bucket)
if outcome == 'delivered' then
  local latency = now - tonumber(ARGV[6])
  if latency < 0 then latency = 0 end
  local index = 1
  for bound in string.gmatch(ARGV[7], '[^,]+') do
    if latency <= tonumber(bound) then break end
    index = index + 1
  end
  redis.call('HINCRBY', KEYS[4], 'delivered', 1)
  redis.call('HINCRBY', KEYS[4], 'lat:' .. index, 1)
  redis.call('HINCRBY', KEYS[4], 'lat_sum_ms', latency)
elseif outcome == 'skipped' and ARGV[6] then
  redis.call('HINCRBY', KEYS[4], 'trimmed', tonumber(ARGV[6]))
elseif outcome == 'dead' then
  local fields = {}
  for i = 7, #ARGV do table.insert(fields, ARGV[i]) end
  redis.call('XADD', KEYS[5], '*', unpack(fields))
  redis.call('HINCRBY', KEYS[4], 'fail:' .. ARGV[6], 1)
  redis.call('HINCRBY', KEYS[4], 'dead', 1)
end
return {'ok', tostring(now)}
