"""Token buckets on the cluster: a session's and an address's bucket live in two slots, each taken by its
own script; a call one of them refuses costs the other nothing."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from daveloper.keys import Keys
from daveloper.ratelimit import Bucket, RateLimiter


@pytest.mark.parametrize("refused_by", ["address", "session"])
async def test_a_call_refused_by_one_bucket_costs_the_other_nothing(redis: aioredis.Redis, refused_by: str) -> None:
    keys = Keys()
    session = Bucket(keys.session_rate("s1"), "calls", 100, 60.0, 61.0)
    address = Bucket(keys.address_rate("203.0.113.1"), "calls", 100, 60.0, 61.0)
    limiter = RateLimiter(redis)
    empty = address if refused_by == "address" else session
    assert (await limiter.take([empty], cost=100)).allowed  # drain it
    other = session if empty is address else address
    before = await limiter.level(other)

    verdict = await limiter.take([session, address])

    assert not verdict.allowed
    assert verdict.retry_after > 0
    assert await limiter.level(other) == pytest.approx(before, abs=0.1)  # its token was given back


async def test_a_call_both_buckets_allow_is_charged_to_both(redis: aioredis.Redis) -> None:
    keys = Keys()
    buckets = [Bucket(keys.session_rate("s2"), "calls", 10, 60.0, 61.0),
               Bucket(keys.address_rate("203.0.113.2"), "calls", 10, 60.0, 61.0)]
    limiter = RateLimiter(redis)
    assert (await limiter.take(buckets)).allowed
    assert [round(await limiter.level(b)) for b in buckets] == [9, 9]
