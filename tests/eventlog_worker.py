"""A second OS process that appends to an event log, for tests/test_eventlog.py.

Usage: ``python tests/eventlog_worker.py REDIS_URL SCOPE TAG COUNT``. Prints
``ready``, waits for a line on stdin (so that several workers start together),
appends COUNT payloads ``TAG:<i>``, then prints the assigned seqs, space-separated.
"""

from __future__ import annotations

import asyncio
import sys

from daveloper.eventlog import EventLog
from daveloper.infra.redis import connect_redis


async def main(url: str, scope: str, tag: str, count: int) -> None:
    client = connect_redis(url)  # one server or redis+cluster://
    try:
        async with EventLog(client, retention=100_000, ttl_seconds=60) as log:
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            seqs = [await log.append(scope, f"{tag}:{i}".encode()) for i in range(count)]
            print(" ".join(map(str, seqs)), flush=True)
    finally:
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
