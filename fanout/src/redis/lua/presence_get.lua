return redis.call('hgetall', KEYS[1])
