"""Token buckets in Redis: atomic across every instance that shares the Redis.

A bucket holds up to ``burst`` tokens and refills continuously at ``burst``
per ``period``. One call takes one token from every bucket it is charged to
(the session's and the client address's) or from none: a single Lua script
checks and takes them together, with Redis's own clock, so instances with
skewed clocks still share one budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

__all__ = ["Bucket", "RateLimiter", "Verdict"]

# KEYS: one hash per bucket. ARGV: cost, then (burst, refill per second) per key.
# Returns {allowed, seconds until allowed (when refused), tokens left in the first bucket}.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local cost = tonumber(ARGV[1])
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  if tokens < cost then wait = math.max(wait, (cost - tokens) / rate) end
end
local allowed = wait == 0 and 1 or 0
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if allowed == 1 then levels[i] = levels[i] - cost end
  redis.call('HSET', key, 't', levels[i], 'ts', now)
  redis.call('EXPIRE', key, math.ceil(burst / rate) + 1)
end
return {allowed, tostring(wait), tostring(levels[1] or 0)}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket: a Redis key, its size and its refill rate."""

    key: str
    burst: int
    period_seconds: float

    @property
    def per_second(self) -> float:
        return self.burst / self.period_seconds


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: When refused: seconds until the call would be allowed.
    retry_after: float
    #: Tokens left in the first bucket after the call.
    remaining: float


class RateLimiter:
    """Charges calls to token buckets in Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._take = redis.register_script(_TAKE)

    async def take(self, buckets: list[Bucket], cost: float = 1.0) -> Verdict:
        """Take ``cost`` tokens from every bucket, or from none if any lacks them."""
        args: list[float] = [cost]
        for bucket in buckets:
            args += [bucket.burst, bucket.per_second]
        allowed, wait, remaining = await self._take(keys=[b.key for b in buckets], args=args)
        return Verdict(bool(int(allowed)), float(wait), float(remaining))

    async def level(self, bucket: Bucket) -> float:
        """Tokens available in ``bucket`` now, taking none."""
        return (await self.take([bucket], cost=0)).remaining
