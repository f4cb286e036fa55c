local top = redis.call('hincrby', KEYS[1], 't', 1)
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('del', KEYS[2])
end
redis.call('expire', KEYS[1], ARGV[5])
redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[3], top .. '-0', 'd', ARGV[2])
redis.call('expire', KEYS[2], ARGV[4])
redis.call(ARGV[7], ARGV[1], top .. ':' .. epoch .. ':' .. ARGV[2])
return {top, epoch}
