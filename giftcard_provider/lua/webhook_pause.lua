-- Pause or resume a webhook endpoint (webhooks.py: Webhooks.set_paused), only if it still exists: a
-- pause racing `webhooks remove` (the worker pausing on a 410 Gone) must not recreate a hash with no
-- URL, which nothing would ever list or remove.
--
-- KEYS[1] the endpoint's hash
-- ARGV    field, value, ... to set
-- Returns 1 if set, 0 if the endpoint is gone.
if redis.call('HEXISTS', KEYS[1], 'url') == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
