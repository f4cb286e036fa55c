local now = tonumber(redis.call('time')[1])
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  local client, user = ARGV[i], ARGV[i + 1]
  if redis.call('hset', KEYS[1], client, ARGV[i + 2]) == 1 then
    redis.call('hincrby', KEYS[3], user, 1)
  end
  redis.call('zadd', KEYS[2], now + ttl, user .. '\n' .. client)
end
redis.call('expire', KEYS[1], ttl)
redis.call('expire', KEYS[2], ttl)
redis.call('expire', KEYS[3], ttl)
return (#ARGV - 1) / 3
