"""Fair lending of a few interchangeable things (the document pool's workers) to many waiters."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from typing import Generic, TypeVar

__all__ = ["FairShare"]

T = TypeVar("T")


class FairShare(Generic[T]):
    """Lends interchangeable things (workers) to waiters, serving their keys (sessions) in turn.

    Each key has its own first-in-first-out queue; a returned item goes to the
    head of the key that was served least recently. A key with many waiters
    therefore gets one item in turn with every other waiting key.
    """

    def __init__(self) -> None:
        self._free: deque[T] = deque()
        self._waiting: OrderedDict[str, deque[asyncio.Future[T]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        """Waiters across every key."""
        return sum(len(queue) for queue in self._waiting.values())

    async def acquire(self, key: str) -> T:
        """An item, as soon as it is ``key``'s turn."""
        if self._free and not self._waiting:
            return self._free.popleft()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # granted just as the waiter left: pass it on
            elif (queue := self._waiting.get(key)) is not None:
                with contextlib.suppress(ValueError):
                    queue.remove(future)
                if not queue:
                    del self._waiting[key]
            raise

    def release(self, item: T) -> None:
        """Give ``item`` to the next key in turn, or keep it until one asks."""
        while self._waiting:
            key, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(key)  # its next waiter queues behind the other keys
            else:
                del self._waiting[key]
            if not future.done():
                future.set_result(item)
                return
        self._free.append(item)
