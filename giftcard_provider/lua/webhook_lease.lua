-- Share one webhook endpoint's 256 lanes (one per bucket of the event log) among the live workers
-- (webhook_worker.py). A worker delivers a lane's events only while it holds the lane's lease; a
-- lease it does not renew (a worker killed or stalled) lapses after its length, and another takes it.
--
-- KEYS[1] the endpoint's leases hash: bucket -> "<worker id>|<expires ms>" (Redis clock)
-- KEYS[2] the endpoint's hash: when it is gone (removed), the leases go too and nothing is owned
-- ARGV[1] this worker's id
-- ARGV[2] lease length (ms)
-- ARGV[3] quota: how many lanes this worker may hold (0: give back every idle lane)
-- ARGV[4] offset: the bucket number where this worker starts looking for free lanes
-- ARGV[5..] lanes this worker is delivering right now: kept (and renewed) even above the quota
-- Returns the buckets this worker holds now, each renewed until now + lease length.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return {}
end
local me, ttl, quota, offset = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local busy = {}
for i = 5, #ARGV do busy[ARGV[i]] = true end
local held = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do held[flat[i]] = flat[i + 1] end

local mine, free = {}, {}
for n = 0, 255 do
  local b = string.format('%02x', (n + offset) % 256)
  local lease = held[b]
  if lease == nil then
    table.insert(free, b)
  else
    local sep = string.find(lease, '|', 1, true)
    local owner, expires = string.sub(lease, 1, sep - 1), tonumber(string.sub(lease, sep + 1))
    if expires <= now then
      table.insert(free, b)
    elseif owner == me then
      table.insert(mine, b)
    end
  end
end

-- Above the quota (another worker came up): give back idle lanes, never one being delivered.
local kept = {}
local excess = #mine - quota
for _, b in ipairs(mine) do
  if excess > 0 and not busy[b] then
    redis.call('HDEL', KEYS[1], b)
    excess = excess - 1
  else
    table.insert(kept, b)
  end
end
for _, b in ipairs(free) do
  if #kept >= quota then break end
  table.insert(kept, b)
end
local lease = me .. '|' .. tostring(now + ttl)
for _, b in ipairs(kept) do
  redis.call('HSET', KEYS[1], b, lease)
end
return kept
