return {redis.call('hlen', KEYS[1]), redis.call('hlen', KEYS[3])}
