local epoch = redis.call('hget', KEYS[1], 'e')
local top = tonumber(redis.call('hget', KEYS[1], 't') or '0')
if not epoch then
  if ARGV[1] == '' then
    return {0, '', {}, {}}
  end
  epoch = ARGV[1]
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('expire', KEYS[1], ARGV[2])
  redis.call('del', KEYS[2])
end
local ids, data = {}, {}
local count = tonumber(ARGV[5])
if count == 0 or (ARGV[4] ~= '' and ARGV[4] ~= epoch) then
  return {top, epoch, ids, data}
end
local entries
if ARGV[6] == '0' then
  local from = '-'
  if ARGV[7] == '1' then from = '(' .. ARGV[3] .. '-0' end
  if count > 0 then
    entries = redis.call('xrange', KEYS[2], from, '+', 'COUNT', count)
  else
    entries = redis.call('xrange', KEYS[2], from, '+')
  end
else
  local to = '+'
  if ARGV[7] == '1' then to = '(' .. ARGV[3] .. '-0' end
  if count > 0 then
    entries = redis.call('xrevrange', KEYS[2], to, '-', 'COUNT', count)
  else
    entries = redis.call('xrevrange', KEYS[2], to, '-')
  end
end
for i, e in ipairs(entries) do
  ids[i] = e[1]
  data[i] = e[2][2]
end
return {top, epoch, ids, data}
