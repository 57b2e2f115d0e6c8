-- Rotate a webhook endpoint's signing secret (webhooks.py: Webhooks.rotate_secret), only if the
-- endpoint still exists (a rotation racing `webhooks remove` must not recreate a hash with no URL).
-- The secret in use becomes the previous one, which signs beside the new one until ARGV[2]: one
-- previous secret at a time, so a rotation during another's overlap stops the oldest secret at once.
--
-- KEYS[1] the endpoint's hash
-- ARGV[1] the new secret
-- ARGV[2] until when the secret it replaces signs too (epoch ms); "0": from now on, never
-- Returns 1 if rotated, 0 if the endpoint is gone.
if redis.call('HEXISTS', KEYS[1], 'url') == 0 then return 0 end
local previous, until_ms = redis.call('HGET', KEYS[1], 'secret'), ARGV[2]
if not previous or until_ms == '0' then previous, until_ms = '', '0' end
redis.call('HSET', KEYS[1], 'secret', ARGV[1], 'previous_secret', previous, 'previous_until', until_ms)
return 1
