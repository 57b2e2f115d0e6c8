-- Rotate a webhook endpoint's signing secret (webhooks.py: Webhooks.rotate_secret), only if the
-- endpoint still exists (a rotation racing `webhooks remove` must not recreate a hash with no URL).
-- The secret in use becomes the previous one, which signs beside the new one for the overlap: one
-- previous secret at a time, so a rotation during another's overlap stops the oldest secret at once.
-- The overlap's end is on Redis's clock, as every time the ledger stores.
--
-- KEYS[1] the endpoint's hash
-- ARGV[1] the new secret
-- ARGV[2] the overlap, in ms: how long the secret it replaces signs too ("0": from now on, never)
-- Returns when the previous secret stops signing (epoch ms; 0: no overlap), or -1 if the endpoint
-- is gone.
if redis.call('HEXISTS', KEYS[1], 'url') == 0 then return -1 end
local previous, until_ms = redis.call('HGET', KEYS[1], 'secret'), 0
local overlap = tonumber(ARGV[2])
if previous and overlap > 0 then
  local now = redis.call('TIME')
  until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + overlap
else
  previous = ''
end
redis.call('HSET', KEYS[1], 'secret', ARGV[1], 'previous_secret', previous, 'previous_until', until_ms)
return until_ms
