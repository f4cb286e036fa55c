-- Shared head of presence_get and presence_stats: drop expired entries.
-- Expiry members are `<user>\n<client>` (client ids hold no newline).
local now = tonumber(redis.call('time')[1])
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
for _, m in ipairs(expired) do
  local user, client = string.match(m, '^(.*)\n([^\n]*)$')
  if client and redis.call('hdel', KEYS[1], client) == 1 then
    if redis.call('hincrby', KEYS[3], user, -1) <= 0 then
      redis.call('hdel', KEYS[3], user)
    end
  end
end
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
