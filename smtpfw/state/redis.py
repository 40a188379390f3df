"""The state store on Redis or Valkey, shared by every smtpfw node.

Two clients:

- a single server at a ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` URL:
  smtpfw's own (``smtpfw.state.resp``): one connection per process, every
  session's commands pipelined on it, RESP2 parsed by hand, the scripts by
  EVALSHA (EVAL when the server answers NOSCRIPT);
- redis-py's asyncio client (a pool of connections) for everything else:
  Redis Cluster (``cluster=True``), ``rediss://`` (TLS), ``unix://``
  sockets, URLs with query options, redis-py options passed to the
  constructor or a client of one's own, and ``pipelined=False``.

Both send the same commands and scripts on the same keys and give the same
results.  Every operation that reads and writes is one
Lua script (atomic on the server: nothing of another client runs between
its read and its write), every other is one command.  Each operation
touches keys of one hash tag (``{...}``), so it runs on a Redis Cluster
(``cluster=True``); the two keys of a greylisting step (the triplet and
its client's pass count) share the client's tag.  Every key written gets a
TTL: nothing grows without bound.

Keys (``prefix`` is "smtpfw" unless configured)::

    PREFIX:r:{KEY}                  rate buckets: hash bucket -> TAT
    PREFIX:c:{KEY}                  concurrency: sorted set holder -> expiry
    PREFIX:g:{CLIENT}:TRIPLET       greylisting: hash first, last, passed, expires
    PREFIX:gc:{CLIENT}              greylisting auto-allowlist: hash passes, expires
    PREFIX:k:{KEY}                  key-value: hash v, e (expiry)

Expiry is decided by the caller's clock (``now``), stored beside the data;
the Redis TTL (by the server's clock, a second longer) only collects keys
that are already dead.  No client-side retries: a failure is reported at
once and the ``Store`` around this back end decides.
"""

from __future__ import annotations

from typing import Any, Sequence

from smtpfw.state.resp import RespClient, supports
from smtpfw.state.store import (GREY_REFRESH, Bucket, Done, GreyResult, Greylisting, RateResult, SlotResult, Value,
                                 gcra, levels)

# Lua: numbers written as %.17g (Lua's default conversion keeps 14 digits,
# a tenth of a millisecond for epoch seconds); TTLs a second past the
# logical expiry; floats returned as strings (Redis truncates Lua numbers).
_LUA_COMMON = """
local function fmt(x) return string.format('%.17g', x) end
local function ttl_ms(seconds) return math.max(1, math.ceil(seconds * 1000)) + 1000 end
"""

HIT = _LUA_COMMON + """
local now, cost, force, n = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4])
local eps, skew = 1e-9, 0.05
local allowed, retry, longest = true, 0, 0
local old, new = {}, {}
for i = 1, n do
  local b = 4 + (i - 1) * 4
  local name, interval, window, limit = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local tat = tonumber(redis.call('HGET', KEYS[1], name) or '0')
  old[i] = math.max(tat, now)
  local t = old[i] + cost * interval
  new[i] = t
  local over = t - now - window
  if over > math.max(eps * window, math.min(skew, interval / 2)) then
    allowed = false
    if cost > limit then over = window end
    if over > retry then retry = over end
  end
end
local out = {allowed and 1 or 0, fmt(allowed and 0 or retry)}
local keep = (allowed or force) and new or old
for i = 1, n do
  local b = 4 + (i - 1) * 4
  local interval = tonumber(ARGV[b + 2])
  out[#out + 1] = fmt(math.max(0, keep[i] - now) / interval)
  if keep[i] - now > longest then longest = keep[i] - now end
end
if allowed or force then
  for i = 1, n do redis.call('HSET', KEYS[1], ARGV[4 + (i - 1) * 4 + 1], fmt(new[i])) end
  redis.call('PEXPIRE', KEYS[1], ttl_ms(longest))
end
return out
"""

ACQUIRE = _LUA_COMMON + """
local now, ttl, limit, holder = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', fmt(now))
local mine = redis.call('ZSCORE', KEYS[1], holder)
local held = redis.call('ZCARD', KEYS[1])
if not mine and held >= limit then return {0, held} end
redis.call('ZADD', KEYS[1], fmt(now + ttl), holder)
if not mine then held = held + 1 end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], ttl_ms(tonumber(last[2]) - now))
return {1, held}
"""

GREYLIST = _LUA_COMMON + """
local now, delay, lifetime, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local allow_after, has_client, refresh = tonumber(ARGV[5]), ARGV[6] == '1', tonumber(ARGV[7])
local passes = 0
if has_client then
  local c = redis.call('HMGET', KEYS[2], 'passes', 'expires')
  if c[1] and tonumber(c[2]) > now then passes = tonumber(c[1]) end
  if allow_after > 0 and passes >= allow_after then
    if now + keep - tonumber(c[2]) > refresh then
      redis.call('HSET', KEYS[2], 'expires', fmt(now + keep))
      redis.call('PEXPIRE', KEYS[2], ttl_ms(keep))
    end
    return {'pass', '0', 1, passes}
  end
end
local t = redis.call('HMGET', KEYS[1], 'first', 'passed', 'expires')
if not t[1] or tonumber(t[3]) <= now then
  redis.call('HSET', KEYS[1], 'first', fmt(now), 'last', fmt(now), 'passed', '0', 'expires', fmt(now + lifetime))
  redis.call('PEXPIRE', KEYS[1], ttl_ms(lifetime))
  return {'new', fmt(delay), 0, passes}
end
local first = tonumber(t[1])
if t[2] ~= '1' and now - first < delay then
  return {'wait', fmt(first + delay - now), 0, passes}
end
if t[2] ~= '1' or now + keep - tonumber(t[3]) > refresh then
  redis.call('HSET', KEYS[1], 'last', fmt(now), 'passed', '1', 'expires', fmt(now + keep))
  redis.call('PEXPIRE', KEYS[1], ttl_ms(keep))
end
if has_client and allow_after > 0 then
  passes = passes + 1
  redis.call('HSET', KEYS[2], 'passes', passes, 'expires', fmt(now + keep))
  redis.call('PEXPIRE', KEYS[2], ttl_ms(keep))
end
return {'pass', '0', 0, passes}
"""

SET = _LUA_COMMON + """
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'e', fmt(now + ttl))
redis.call('PEXPIRE', KEYS[1], ttl_ms(ttl))
return 1
"""

INCR = _LUA_COMMON + """
local amount, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cur = redis.call('HMGET', KEYS[1], 'v', 'e')
local n = 0
if cur[1] and tonumber(cur[2]) > now then n = tonumber(cur[1]) or 0 end
n = n + amount
local text = (n == math.floor(n) and math.abs(n) < 1e15) and string.format('%d', n) or fmt(n)
redis.call('HSET', KEYS[1], 'v', text, 'e', fmt(now + ttl))
redis.call('PEXPIRE', KEYS[1], ttl_ms(ttl))
return text
"""


def tag(text: str) -> str:
    """``text`` as a hash tag: braces in it would end the tag early (the
    key would still be consistent, but clustered by less of itself)."""
    return "{" + text.replace("{", "(").replace("}", ")") + "}"


class RedisBackend:
    name = "redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "smtpfw", timeout: float = 0.25,
                 connections: int = 32, cluster: bool = False, client: Any = None, pipelined: bool = True,
                 **options: Any):
        """``timeout``: smtpfw's client: the wait for a connection (TCP,
        AUTH, SELECT), and a connection with a command unanswered for 4 ×
        ``timeout`` (at least 1 s) is given up by the next call; redis-py:
        the socket timeouts (connect and each command) and the wait for a
        free connection.  The ``Store``'s own timeout covers the whole
        operation either way.  ``connections``: redis-py's most connections
        per process (per node of a cluster); operations beyond wait for one.
        ``pipelined=False``, ``options`` (redis-py's) or ``client``: redis-py."""
        self.url, self.prefix, self.cluster = url, prefix, cluster
        self._pool: Any = None
        self.pipelined = client is None and pipelined and not cluster and not options and supports(url)
        if self.pipelined:
            client = RespClient.from_url(url, connect_timeout=timeout, stall=max(1.0, 4 * timeout))
            self._command = client.call
        else:
            if client is None:
                client = self._redis_py(url, timeout, connections, cluster, options)
            self._command = client.execute_command
        self.client = client
        script = client.script if self.pipelined else client.register_script      # both: await s(keys=, args=)
        self._hit, self._acquire, self._greylist = script(HIT), script(ACQUIRE), script(GREYLIST)
        self._set, self._incr = script(SET), script(INCR)

    def _redis_py(self, url: str, timeout: float, connections: int, cluster: bool, options: dict) -> Any:
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        common = dict(socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True,
                      retry=Retry(NoBackoff(), 0), max_connections=connections, **options)
        if cluster:
            return aioredis.RedisCluster.from_url(url, **common)
        self._pool = aioredis.BlockingConnectionPool.from_url(url, timeout=timeout, **common)
        return aioredis.Redis(connection_pool=self._pool)

    def key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{tag(key)}"

    # ---- rate limits --------------------------------------------------------

    async def hit(self, key: str, buckets: Sequence[Bucket], cost: float, now: float, force: bool) -> RateResult:
        args: list[Any] = [repr(float(now)), repr(float(cost)), "1" if force else "0", len(buckets)]
        for b in buckets:
            args += [b.name, repr(b.interval), repr(float(b.window)), b.limit]
        out = await self._hit(keys=[self.key("r", key)], args=args)
        return RateResult(bool(int(out[0])), tuple(float(x) for x in out[2:]), float(out[1]),
                          tuple(b.limit for b in buckets))

    async def peek(self, key: str, buckets: Sequence[Bucket], now: float) -> RateResult:
        if not buckets:
            return RateResult(True, ())
        raw = await self._command("HMGET", self.key("r", key), *(b.name for b in buckets))
        tats = [float(x) if x is not None else 0.0 for x in raw]
        allowed, _new, _counts, retry = gcra(buckets, tats, 1, now)
        return RateResult(allowed, levels(buckets, tats, now), retry, tuple(b.limit for b in buckets))

    # ---- concurrency --------------------------------------------------------

    async def acquire(self, key: str, limit: int, ttl: float, now: float, holder: str) -> SlotResult:
        out = await self._acquire(keys=[self.key("c", key)], args=[repr(float(now)), repr(float(ttl)), limit, holder])
        return SlotResult(bool(int(out[0])), int(out[1]))

    async def release(self, key: str, holder: str) -> Done:
        return Done(bool(await self._command("ZREM", self.key("c", key), holder)))

    async def holders(self, key: str, now: float) -> int:
        return int(await self._command("ZCOUNT", self.key("c", key), f"({now!r}", "+inf"))

    # ---- greylisting --------------------------------------------------------

    async def greylist(self, triplet: str, client: str, g: Greylisting, now: float) -> GreyResult:
        group = tag(client or triplet)
        keys = [f"{self.prefix}:g:{group}:{triplet}", f"{self.prefix}:gc:{group}"]
        args = [repr(float(now)), repr(float(g.delay)), repr(float(g.lifetime)), repr(float(g.keep)),
                g.allow_after, "1" if client else "0", repr(GREY_REFRESH)]
        verdict, retry, allowlisted, passes = await self._greylist(keys=keys, args=args)
        return GreyResult(verdict, float(retry), bool(int(allowlisted)), int(passes))

    # ---- key-value ----------------------------------------------------------

    async def get(self, key: str, now: float) -> Value:
        value, expires = await self._command("HMGET", self.key("k", key), "v", "e")
        if value is None or expires is None or float(expires) <= now:
            return Value(None)
        return Value(value)

    async def set(self, key: str, value: str, ttl: float, now: float) -> Done:
        await self._set(keys=[self.key("k", key)], args=[value, repr(float(now)), repr(float(ttl))])
        return Done()

    async def incr(self, key: str, amount: float, ttl: float, now: float) -> Value:
        text = await self._incr(keys=[self.key("k", key)], args=[repr(float(amount)), repr(float(now)), repr(float(ttl))])
        return Value(float(text))

    async def delete(self, key: str) -> Done:
        return Done(bool(await self._command("DEL", self.key("k", key))))

    # ---- the service --------------------------------------------------------

    async def ping(self) -> None:
        await self._command("PING")

    async def close(self) -> None:
        if self.pipelined:
            await self.client.close()
            return
        close = getattr(self.client, "aclose", None) or self.client.close
        await close()
        if self._pool is not None:
            await self._pool.disconnect()

