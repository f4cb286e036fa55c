local now = tonumber(redis.call('time')[1])
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', now)
for i = 1, #expired, 500 do
  redis.call('hdel', KEYS[1], unpack(expired, i, math.min(i + 499, #expired)))
end
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
end
return redis.call('hgetall', KEYS[1])
