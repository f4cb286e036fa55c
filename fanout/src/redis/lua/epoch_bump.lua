-- A node found the room's stream behind what it had delivered from epoch ARGV[1]
-- (a failover or restart lost a tail and its offsets were given out again): the
-- room takes epoch ARGV[2], unless another node changed it first. Returns the
-- epoch now ('' when the room has no stream) and the top offset.
local epoch = redis.call('hget', KEYS[1], 'e')
if epoch == ARGV[1] then
  redis.call('hset', KEYS[1], 'e', ARGV[2])
  epoch = ARGV[2]
end
return {epoch or '', tonumber(redis.call('hget', KEYS[1], 't') or '0')}
