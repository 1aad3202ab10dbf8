"""TextCoalescer: text unchanged, few events when the writer is slow, the first text at once, errors surface,
no task between writes."""

from __future__ import annotations

import asyncio

import pytest

from daveloper.agent.coalesce import TextCoalescer


class Writer:
    """Records what is emitted; a write can be held open to play a slow (busy) event log."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.open = asyncio.Event()
        self.open.set()
        self.writing = asyncio.Event()

    async def emit(self, text: str) -> None:
        self.writing.set()
        await self.open.wait()
        self.events.append(text)


async def test_text_is_unchanged_and_take_hands_back_what_was_not_written() -> None:
    writer = Writer()
    async with TextCoalescer(writer.emit, chars=1000, seconds=60) as coalescer:
        for piece in ["a", "bc", "", "def"]:
            coalescer.add(piece)
        assert await coalescer.take() == "abcdef"  # a long window: nothing written yet
    assert writer.events == []


async def test_between_writes_no_task_runs_and_take_returns_without_waiting() -> None:
    writer = Writer()
    async with TextCoalescer(writer.emit, chars=3, seconds=60) as coalescer:
        coalescer.add("abc")
        await writer.writing.wait()
        await asyncio.sleep(0)
        assert writer.events == ["abc"]
        assert asyncio.all_tasks() == {asyncio.current_task()}  # only a timer would wait for the next window
        coalescer.add("d")
        taking = coalescer.take().__await__()
        with pytest.raises(StopIteration) as taken:
            taking.send(None)  # done in one step: nothing to wait for, no trip through the loop
        assert taken.value.value == "d"


async def test_text_arriving_during_a_slow_write_goes_out_in_one_event() -> None:
    writer = Writer()
    async with TextCoalescer(writer.emit, chars=4, seconds=60) as coalescer:
        writer.open.clear()
        coalescer.add("abcd")  # reaches the size: flushes at once ...
        await writer.writing.wait()  # ... and the write hangs, like a busy log
        for _ in range(100):
            coalescer.add("x")
        writer.open.set()
        for _ in range(10):  # the pending text is over the size: written as soon as the first write is done
            await asyncio.sleep(0)
        assert await coalescer.take() == ""
    assert writer.events == ["abcd", "x" * 100]


async def test_the_first_text_goes_out_at_once_then_the_window_applies() -> None:
    writer = Writer()
    async with TextCoalescer(writer.emit, chars=1000, seconds=60, immediate_first=True) as coalescer:
        coalescer.add("first")
        await writer.writing.wait()
        await asyncio.sleep(0)
        assert writer.events == ["first"]
        coalescer.add("second")
        coalescer.add("third")
        for _ in range(5):
            await asyncio.sleep(0)
        assert writer.events == ["first"]  # waiting for the window (or the size)
        assert await coalescer.take() == "secondthird"
    assert writer.events == ["first"]


async def test_the_window_flushes_without_more_text() -> None:
    writer = Writer()
    async with TextCoalescer(writer.emit, chars=1000, seconds=0.001) as coalescer:
        coalescer.add("alone")
        await asyncio.wait_for(writer.writing.wait(), 5)
        await asyncio.sleep(0)
        assert writer.events == ["alone"]
        assert await coalescer.take() == ""
    assert writer.events == ["alone"]


async def test_a_failed_write_surfaces_in_add_and_take() -> None:
    async def broken(text: str) -> None:
        raise ConnectionError("log down")

    async with TextCoalescer(broken, chars=1, seconds=60) as coalescer:
        coalescer.add("a")  # reaches the size: written at once, and fails
        for _ in range(3):
            await asyncio.sleep(0)
        with pytest.raises(ConnectionError):
            coalescer.add("b")
        with pytest.raises(ConnectionError):
            await coalescer.take()


async def test_take_waits_for_the_write_in_flight_and_hands_back_the_rest() -> None:
    writer = Writer()
    async with TextCoalescer(writer.emit, chars=3, seconds=60) as coalescer:
        writer.open.clear()
        coalescer.add("abc")  # a write starts and hangs
        await writer.writing.wait()
        coalescer.add("de")
        taking = asyncio.create_task(coalescer.take())
        await asyncio.sleep(0)
        assert not taking.done()  # the write in flight finishes first
        writer.open.set()
        assert await taking == "de"
    assert writer.events == ["abc"]  # "de" is the caller's to write, with its next event


async def test_leaving_early_cancels_the_write_in_flight() -> None:
    writer = Writer()
    writer.open.clear()
    async with TextCoalescer(writer.emit, chars=1, seconds=60) as coalescer:
        coalescer.add("a")
        await writer.writing.wait()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert writer.events == []
    with pytest.raises(RuntimeError, match="closed"):
        coalescer.add("b")


async def test_take_right_after_a_write_was_scheduled_hands_its_text_back_unwritten() -> None:
    writer = Writer()
    async with TextCoalescer(writer.emit, chars=1000, seconds=60, immediate_first=True) as coalescer:
        coalescer.add("only")  # the first text: its write is scheduled at once ...
        assert await coalescer.take() == "only"  # ... and taken back before it started: one append, not two
    for _ in range(3):
        await asyncio.sleep(0)
    assert writer.events == []
