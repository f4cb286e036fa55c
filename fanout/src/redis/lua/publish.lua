-- A retry of a publish that already ran (its reply was lost) gets the first
-- run's result instead of a second publication.
local done = redis.call('get', KEYS[3])
if done then
  local sep = string.find(done, ':', 1, true)
  return {tonumber(string.sub(done, 1, sep - 1)), string.sub(done, sep + 1)}
end
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
redis.call('set', KEYS[3], top .. ':' .. epoch, 'EX', ARGV[8])
return {top, epoch}
