"""Heartbeats on long streams: a keepalive after a quiet interval, so a client can tell stalled from slow.

A turn that thinks for a minute and a server that died look the same to a
client reading a stream: nothing arrives. So every long stream (Chat, Watch,
WatchJob, Tail, Upload) sends a ``Heartbeat`` message (``heartbeat`` field of
its response) once it has sent nothing for the interval. The edge forwards it
like any other message (a ``msg`` frame, an NDJSON line, an SSE event).

One timer task per stream, which sleeps until the interval after the last
send; sending an event costs only the time stamp.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from types import TracebackType
from typing import Any

from daveloper.rpc import Call
from generated.daveloper.v1 import Heartbeat

__all__ = ["Heartbeats", "heartbeat"]


def heartbeat(last_seq: int = 0) -> Heartbeat:
    """A heartbeat stamped now."""
    return Heartbeat(time=datetime.datetime.now(datetime.UTC), last_seq=last_seq)


class Heartbeats:
    """The sender of one stream: :meth:`send` for its messages, a heartbeat from ``beat()`` when quiet.

    ``async with Heartbeats(call, every, beat) as stream: await stream.send(message)``. Sends are
    serialised (a lock), so several tasks may send on one stream. ``every <= 0`` sends no heartbeat.
    """

    def __init__(self, call: Call[Any, Any], every: float, beat: Callable[[], Any]) -> None:
        self._call = call
        self._every = every
        self._beat = beat
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeats:
        if self._every > 0:
            self._timer = asyncio.create_task(self._run(), name="stream-heartbeat")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            await asyncio.wait([timer])  # not ``await timer``: a cancel of our own must not be swallowed
            if not timer.cancelled():
                timer.exception()  # a beat that failed: the stream is gone, as the handler finds out itself

    async def send(self, message: Any) -> None:
        """Send one message on the stream (waiting for another sender to finish)."""
        async with self._lock:
            await self._call.send(message)
            self._last = self._loop.time()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(0.0, self._last + self._every - self._loop.time()))
            if self._loop.time() - self._last >= self._every:
                await self.send(self._beat())
