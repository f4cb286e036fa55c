local now = tonumber(redis.call('time')[1])
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('zadd', KEYS[2], now + ttl, ARGV[i])
end
redis.call('expire', KEYS[1], ttl)
redis.call('expire', KEYS[2], ttl)
return (#ARGV - 1) / 2
