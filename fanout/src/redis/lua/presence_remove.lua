redis.call('zrem', KEYS[2], ARGV[2] .. '\n' .. ARGV[1])
if redis.call('hdel', KEYS[1], ARGV[1]) == 1 then
  if redis.call('hincrby', KEYS[3], ARGV[2], -1) <= 0 then
    redis.call('hdel', KEYS[3], ARGV[2])
  end
end
return 1
