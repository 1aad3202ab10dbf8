"""Token buckets in Redis: atomic across every instance that shares the Redis.

A bucket holds up to ``burst`` tokens and refills continuously at ``burst``
per ``period``. One call takes one token from every bucket it is charged to
(the session's and the client address's) or from none: a single Lua script
checks and takes them together, with Redis's own clock, so instances with
skewed clocks still share one budget.

All buckets of one owner (a session, a client address) are fields of one hash
(``<class>:t`` tokens, ``<class>:ts`` last update), so a session's every limit
is read with one ``HGETALL``. The hash must outlive a full refill of its slowest
bucket; it records how long it will live (``until``) and the script extends its
expiry only when that runs short, not on every call. A refused call writes nothing.

On a Redis Cluster the session's hash and the address's hash live in
different slots, and no script may touch both. There each bucket is taken by
its own script (still one pipelined round trip); if one refuses, the tokens the
others took are given back, so a refused call still costs nothing (the
give-back is a second round trip, paid only by refused calls).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from daveloper.infra.redis import is_cluster, reply_text

__all__ = ["Bucket", "RateLimiter", "Verdict"]

# KEYS: one hash per owner. ARGV: cost, then (field, burst, refill per second, keep seconds) per key.
# Returns {allowed, seconds until allowed (when refused), tokens left in the first bucket}.
_TAKE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local cost = tonumber(ARGV[1])
local levels, kept, wait = {}, {}, 0
for i, key in ipairs(KEYS) do
  local at = 4 * i - 2
  local field, burst, rate = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local state = redis.call('HMGET', key, field .. ':t', field .. ':ts', 'until')
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  levels[i] = tokens
  kept[i] = tonumber(state[3]) or 0
  if tokens < cost then wait = math.max(wait, (cost - tokens) / rate) end
end
if wait > 0 or cost == 0 then
  return {wait == 0 and 1 or 0, tostring(wait), tostring(levels[1] or 0)}
end
for i, key in ipairs(KEYS) do
  local at = 4 * i - 2
  local field, keep = ARGV[at], tonumber(ARGV[at + 3])
  levels[i] = levels[i] - cost
  if kept[i] < now + keep then
    local expiry = now + 2 * keep
    redis.call('HSET', key, field .. ':t', levels[i], field .. ':ts', now, 'until', expiry)
    redis.call('PEXPIREAT', key, math.ceil(expiry * 1000))
  else
    redis.call('HSET', key, field .. ':t', levels[i], field .. ':ts', now)
  end
end
return {1, '0', tostring(levels[1])}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One token bucket: a field of its owner's Redis hash, its size, its refill rate.

    ``keep_seconds`` is how long the owner's hash must last after a charge: the
    longest period of any bucket in it, plus a second.
    """

    key: str
    field: str
    burst: int
    period_seconds: float
    keep_seconds: float

    @property
    def per_second(self) -> float:
        return self.burst / self.period_seconds

    def level(self, state: Mapping[str, str], now: float) -> float:
        """Tokens available at ``now`` (unix seconds) in a hash read with ``HGETALL`` (decoded)."""
        tokens, ts = state.get(f"{self.field}:t"), state.get(f"{self.field}:ts")
        if tokens is None or ts is None:
            return float(self.burst)
        return min(float(self.burst), float(tokens) + max(0.0, now - float(ts)) * self.per_second)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    #: When refused: seconds until the call would be allowed.
    retry_after: float
    #: Tokens left in the first bucket after the call.
    remaining: float


class RateLimiter:
    """Charges calls to token buckets in Redis, alone or in a pipeline with other commands."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._take = redis.register_script(_TAKE)
        #: One script per bucket (on a cluster, see the module docstring), else one for all.
        self._split = is_cluster(redis)

    def _groups(self, buckets: Sequence[Bucket]) -> list[Sequence[Bucket]]:
        return [[bucket] for bucket in buckets] if self._split else [buckets]

    async def _take_group(self, group: Sequence[Bucket], cost: float) -> Verdict:
        args = self._args(group, cost)
        return self._verdict(await self._take(keys=args[:len(group)], args=args[len(group):]))

    async def _combine(self, groups: Sequence[Sequence[Bucket]], verdicts: Sequence[Verdict], cost: float) -> Verdict:
        """One verdict for the groups; when one refused, the tokens the others took are given back."""
        if len(verdicts) == 1 or all(v.allowed for v in verdicts):
            return verdicts[0]
        for group, verdict in zip(groups, verdicts, strict=True):
            if verdict.allowed and cost:
                await self._take_group(group, -cost)
        first = verdicts[0]
        return Verdict(False, max(v.retry_after for v in verdicts if not v.allowed),
                       first.remaining + cost if first.allowed else first.remaining)

    @staticmethod
    def _args(buckets: Sequence[Bucket], cost: float) -> list[Any]:
        args: list[Any] = [b.key for b in buckets]
        args.append(cost)
        for bucket in buckets:
            args += [bucket.field, bucket.burst, bucket.per_second, bucket.keep_seconds]
        return args

    @staticmethod
    def _verdict(reply: Sequence[Any]) -> Verdict:
        allowed, wait, remaining = reply
        return Verdict(bool(int(allowed)), float(wait), float(remaining))

    async def take(self, buckets: Sequence[Bucket], cost: float = 1.0) -> Verdict:
        """Take ``cost`` tokens from every bucket, or from none if any lacks them."""
        groups = self._groups(buckets)
        return await self._combine(groups, [await self._take_group(g, cost) for g in groups], cost)

    def queue_take(self, pipe: Any, buckets: Sequence[Bucket], cost: float = 1.0) -> int:
        """Queue :meth:`take` on a pipeline (non-transactional, executed with ``raise_on_error=False``).

        Returns how many replies it queued (one, or one per bucket on a
        cluster): pass them all to :meth:`settle`. ``EVALSHA`` is queued
        directly: a script registered on a redis-py pipeline costs an extra
        ``SCRIPT EXISTS`` round trip on every execute.
        """
        groups = self._groups(buckets)
        for group in groups:
            # execute_command, not pipe.evalsha: redis-py's cluster pipeline refuses the latter
            pipe.execute_command("EVALSHA", self._take.sha, len(group), *self._args(group, cost))
        return len(groups)

    async def settle(self, replies: Sequence[Any], buckets: Sequence[Bucket], cost: float = 1.0) -> Verdict:
        """The verdict of a queued take; after a Redis restart (script not loaded) the take runs again, loading it."""
        groups = self._groups(buckets)
        verdicts = []
        for group, reply in zip(groups, replies, strict=True):
            if isinstance(reply, NoScriptError):
                verdicts.append(await self._take_group(group, cost))
                continue
            if isinstance(reply, BaseException):
                raise reply
            verdicts.append(self._verdict(reply))
        return await self._combine(groups, verdicts, cost)

    async def level(self, bucket: Bucket) -> float:
        """Tokens available in ``bucket`` now, taking none (and writing nothing)."""
        return (await self.take([bucket], cost=0)).remaining

    @staticmethod
    def levels(reply: Mapping[Any, Any], buckets: Sequence[Bucket], now: float | None = None) -> list[float]:
        """Tokens available in each of ``buckets`` (fields of one hash) from its ``HGETALL`` reply.

        Read-only and by this machine's clock (the take script uses Redis's): a
        figure for display, not for admission.
        """
        state = {reply_text(k): reply_text(v) for k, v in reply.items()}
        when = time.time() if now is None else now
        return [bucket.level(state, when) for bucket in buckets]
