"""The durable event log, against a real Valkey: seqs, replay/tail, cursors, cancel, processes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from grpclib.const import Status

from daveloper.errors import Cancelled, CursorExpired, FailedPrecondition, InvalidArgument, Unavailable
from daveloper.eventlog import Entry, EventLog
from daveloper.keys import Keys

pytestmark = pytest.mark.timeout(30)

WORKER = Path(__file__).with_name("eventlog_worker.py")


@pytest.fixture
async def log(redis: aioredis.Redis) -> AsyncIterator[EventLog]:
    async with EventLog(redis, retention=10_000, ttl_seconds=60) as events:
        yield events


async def collect(log: EventLog, scope: str, after_seq: int = 0, *, follow: bool = True) -> list[Entry]:
    async with contextlib.aclosing(log.read(scope, after_seq, follow=follow)) as entries:
        return [entry async for entry in entries]


async def eventually(condition: Callable[[], Awaitable[bool]], *, within: float = 3.0) -> None:
    """Poll ``condition`` (server state, which nothing notifies us of) until it holds."""
    for _ in range(int(within / 0.01)):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition did not hold within {within} s")


async def test_concurrent_writers_get_gap_free_increasing_seqs(log: EventLog) -> None:
    async def writer(w: int) -> list[int]:
        return [await log.append("job", f"{w}:{i}".encode()) for i in range(50)]

    async with asyncio.TaskGroup() as tasks:
        writers = [tasks.create_task(writer(w)) for w in range(8)]
    per_writer = [task.result() for task in writers]

    assert sorted(seq for seqs in per_writer for seq in seqs) == list(range(1, 401))
    assert all(seqs == sorted(seqs) for seqs in per_writer)
    assert await log.last_seq("job") == 400
    expected = {seq: f"{w}:{i}".encode() for w, seqs in enumerate(per_writer) for i, seq in enumerate(seqs)}
    stored = await collect(log, "job", follow=False)
    assert {e.seq: e.payload for e in stored} == expected
    assert [e.seq for e in stored] == list(range(1, 401))


async def test_replay_then_live_tail_delivers_exactly_what_was_appended(log: EventLog) -> None:
    appended = [f"event {i}".encode() for i in range(10)]
    for payload in appended[:5]:
        await log.append("turn", payload)
    reader = asyncio.create_task(collect(log, "turn"))
    await asyncio.sleep(0.3)  # the reader has replayed and is now tailing (longer than one block)
    assert not reader.done()
    for payload in appended[5:]:
        await log.append("turn", payload)
    await log.append("turn", b"done", final=True)

    entries = await asyncio.wait_for(reader, 5)
    assert [e.seq for e in entries] == list(range(1, 12))
    assert [e.payload for e in entries] == [*appended, b"done"]
    assert [e.final for e in entries] == [False] * 10 + [True]


async def test_reader_waits_for_a_scope_that_has_not_started(log: EventLog) -> None:
    reader = asyncio.create_task(collect(log, "later"))
    await asyncio.sleep(0.3)
    assert not reader.done()
    await log.append("later", b"first", final=True)
    assert await asyncio.wait_for(reader, 5) == [Entry(1, b"first", final=True)]


async def test_reader_resuming_at_random_points_sees_every_entry_once(log: EventLog) -> None:
    rng = random.Random(20240601)
    appended: dict[int, bytes] = {}

    async def writer(w: int) -> None:
        for i in range(100):
            payload = f"{w}:{i}".encode()
            appended[await log.append("chaos", payload)] = payload
            await asyncio.sleep(rng.uniform(0, 0.006))

    async def write_all() -> None:
        async with asyncio.TaskGroup() as tasks:
            for w in range(3):
                tasks.create_task(writer(w))
        appended[await log.append("chaos", b"end", final=True)] = b"end"

    seen: list[Entry] = []

    async def read_from_last_seen() -> None:
        async for entry in log.read("chaos", seen[-1].seq if seen else 0):
            seen.append(entry)

    resumes = 0
    writing = asyncio.create_task(write_all())
    try:
        while True:
            reader = asyncio.create_task(read_from_last_seen())
            await asyncio.sleep(rng.uniform(0, 0.005))
            if reader.done():
                await reader  # the final entry ended it (or it failed: re-raise)
                break
            reader.cancel()
            await asyncio.wait([reader])
            if not reader.cancelled():
                reader.result()  # re-raise what ended it
                pytest.fail("the reader swallowed its cancellation and ran on")
            resumes += 1
    finally:
        await writing

    assert resumes > 50
    assert [e.seq for e in seen] == list(range(1, 302))
    assert {e.seq: e.payload for e in seen} == appended
    assert seen[-1].final


async def test_many_watchers_of_one_scope_each_get_every_event_once_in_order(log: EventLog) -> None:
    total = 600
    results: dict[str, list[int]] = {}

    async def watch(name: str, after_seq: int) -> None:
        async with contextlib.aclosing(log.read("busy", after_seq)) as entries:
            results[name] = [after_seq] + [entry.seq async for entry in entries]

    async def write() -> None:
        seq = 0
        while seq < total - 1:
            batch = min(1 + seq % 7, total - 1 - seq)  # single appends and batches of up to 7
            seq = await log.append_many("busy", [b"%d" % (seq + i + 1) for i in range(batch)]) + batch - 1
            await asyncio.sleep(0)
        await log.append("busy", b"end", final=True)

    async with asyncio.TaskGroup() as tasks:
        for i in range(40):  # present from the start
            tasks.create_task(watch(f"early-{i}", 0))
        writer = tasks.create_task(write())
        for i in range(40):  # joining mid-stream, from the start or from where they are told
            await asyncio.sleep(0.003)
            last = await log.last_seq("busy")
            tasks.create_task(watch(f"late-{i}", 0 if i % 2 else last))
        await writer
    assert log.scopes_followed == 0  # one subscription served them all, and it is gone
    for name, seqs in results.items():
        assert seqs == list(range(seqs[0], total + 1)), name  # each 1..n (from its cursor), once, in order
    assert any(seqs[0] > 0 for seqs in results.values())


async def test_followers_resume_from_the_stream_when_their_subscription_is_lost(
    log: EventLog, redis: aioredis.Redis
) -> None:
    readers = [asyncio.create_task(collect(log, "flaky")) for _ in range(5)]
    await log.append("flaky", b"1")
    await eventually(lambda: _subscribed(log, 1))
    # Kill every pub/sub connection (tails and cancel watches) and finish the log while they
    # reconnect: those notices are lost, and only the re-subscription (which makes the
    # followers re-read the stream) can bring the readers to the end.
    assert await redis.client_kill_filter(_type="pubsub") >= 1
    await log.append_many("flaky", [b"%d" % i for i in range(2, 22)], final=True)
    for reader in readers:
        assert [e.seq for e in await asyncio.wait_for(reader, 10)] == list(range(1, 22))


async def test_a_follower_notices_a_scope_that_expired_while_it_was_quiet(redis: aioredis.Redis) -> None:
    async with EventLog(redis, retention=100, ttl_seconds=1) as log:
        await log.append("short", b"x")
        with pytest.raises(CursorExpired) as caught:
            await asyncio.wait_for(collect(log, "short"), 5)
        assert caught.value.metadata["after_seq"] == "1"


async def test_append_many_is_one_gap_free_run_and_may_finish_the_scope(log: EventLog) -> None:
    assert await log.append("s", b"a") == 1
    assert await log.append_many("s", [b"b", b"", b"d" * 70_000]) == 2
    assert await log.append_many("s", [b"e", b"f"], final=True) == 5
    with pytest.raises(FailedPrecondition):
        await log.append_many("s", [b"g"])
    with pytest.raises(ValueError, match="at least one"):
        await log.append_many("t", [])
    entries = await collect(log, "s")
    assert [(e.seq, e.payload, e.final) for e in entries] == [
        (1, b"a", False), (2, b"b", False), (3, b"", False), (4, b"d" * 70_000, False),
        (5, b"e", False), (6, b"f", True)]


async def test_a_writer_s_batch_sent_again_is_stored_once(log: EventLog) -> None:
    assert await log.append_many("w", [b"a", b"b"], writer=("turn_1", 1)) == 1
    assert await log.append("w", b"other") == 3  # another writer between the retries
    # The retry of batch 1 (its reply was lost): the seq it got, nothing stored again.
    assert await log.append_many("w", [b"a", b"b"], writer=("turn_1", 1)) == 1
    assert await log.append("w", b"c", writer=("turn_1", 2), final=True) == 4
    assert await log.append("w", b"c", writer=("turn_1", 2), final=True) == 4  # even once finished
    assert [e.payload for e in await collect(log, "w")] == [b"a", b"b", b"other", b"c"]


async def test_final_stops_readers_and_finishes_the_scope(log: EventLog) -> None:
    readers = [asyncio.create_task(collect(log, "s")) for _ in range(2)]
    for i in range(3):
        await log.append("s", b"%d" % i)
    assert await log.append("s", b"bye", final=True) == 4

    for reader in readers:
        assert [e.seq for e in await asyncio.wait_for(reader, 5)] == [1, 2, 3, 4]
    with pytest.raises(FailedPrecondition) as caught:
        await log.append("s", b"late")
    assert caught.value.reason == "EVENT_LOG_FINISHED"
    assert caught.value.metadata["final_seq"] == "4"
    assert await log.last_seq("s") == 4
    # Late readers replay up to the final entry and stop without waiting.
    assert len(await asyncio.wait_for(collect(log, "s"), 1)) == 4
    assert await asyncio.wait_for(collect(log, "s", 4), 1) == []
    assert await log.request_cancel("s") is False


async def test_follow_false_returns_what_is_stored_when_the_read_begins(log: EventLog) -> None:
    for i in range(3):
        await log.append("s", b"%d" % i)
    seen = []
    async with contextlib.aclosing(log.read("s", follow=False)) as entries:
        async for entry in entries:
            seen.append(entry.seq)
            await log.append("s", b"more")  # not part of this read
    assert seen == [1, 2, 3]
    assert [e.seq for e in await collect(log, "s", 3, follow=False)] == [4, 5, 6]
    assert await collect(log, "s", 6, follow=False) == []
    assert await collect(log, "empty", follow=False) == []


async def test_cursor_behind_retention_raises_cursor_expired(redis: aioredis.Redis) -> None:
    async with EventLog(redis, retention=10, ttl_seconds=60) as log:
        for i in range(300):  # trimming is approximate: whole stream nodes (100 entries) go at once
            await log.append("s", b"%d" % i)
        ((first_id, _),) = await redis.xrange(Keys().scope("s").stream, count=1)
        first = int(first_id.split(b"-")[0])
        assert 1 < first <= 291

        for follow in (True, False):
            with pytest.raises(CursorExpired) as caught:
                await collect(log, "s", 0, follow=follow)
            assert caught.value.status is Status.FAILED_PRECONDITION
            assert caught.value.reason == "CURSOR_EXPIRED"
            assert caught.value.metadata == {"scope": "s", "after_seq": "0", "first_seq": str(first)}
        with pytest.raises(CursorExpired):
            await collect(log, "s", first - 2, follow=False)
        retained = await collect(log, "s", first - 1, follow=False)
        assert [e.seq for e in retained] == list(range(first, 301))


async def test_trimming_that_overtakes_a_slow_reader_raises_cursor_expired(redis: aioredis.Redis) -> None:
    async with EventLog(redis, retention=10, ttl_seconds=60) as log:
        for i in range(5):
            await log.append("s", b"%d" % i)
        seen = []

        async def read_slowly() -> None:
            async with contextlib.aclosing(log.read("s")) as entries:
                async for entry in entries:
                    seen.append(entry.seq)
                    if entry.seq == 1:
                        for i in range(300):
                            await log.append("s", b"%d" % i)

        with pytest.raises(CursorExpired) as caught:
            await read_slowly()
        assert seen == [1, 2, 3, 4, 5]  # already fetched; then the gap is detected, never skipped
        assert caught.value.metadata["after_seq"] == "5"
        assert int(caught.value.metadata["first_seq"]) > 6


async def test_bad_cursors_are_invalid_arguments(log: EventLog) -> None:
    await log.append("s", b"x")
    with pytest.raises(InvalidArgument) as caught:
        await collect(log, "s", 2)
    assert caught.value.violations == [("after_seq", "is ahead of the last event (1)")]
    with pytest.raises(InvalidArgument):
        await collect(log, "s", -1)
    with pytest.raises(InvalidArgument):
        await log.append("", b"x")


async def test_cancel_requested_before_the_owner_watches_is_seen(log: EventLog) -> None:
    assert await log.request_cancel("job") is True
    async with log.cancellation("job") as cancelled:
        assert cancelled.is_set()
    async with log.cancellation("other") as cancelled:
        assert not cancelled.is_set()


async def test_cancel_reaches_the_owner_from_another_client(
    log: EventLog, redis: aioredis.Redis, redis_url: str
) -> None:
    other_client = aioredis.Redis.from_url(redis_url)
    try:
        async with (
            EventLog(other_client, retention=100, ttl_seconds=60) as other,
            log.cancellation("a") as a1,
            log.cancellation("a") as a2,
            log.cancellation("b") as b,
        ):
            # Every watch of this instance shares one subscriber connection.
            assert len(await redis.client_list(_type="pubsub")) == 1
            assert not a1.is_set()
            assert await other.request_cancel("a") is True
            await asyncio.wait_for(asyncio.gather(a1.wait(), a2.wait()), 2)
            assert not b.is_set()
            async with log.cancellation("a") as late:  # joins the cancelled watch
                assert late.is_set()
        # Leaving does not wait for the UNSUBSCRIBE; it follows at once.
        await eventually(lambda: _numsub_is(redis, ["dv:control:{a}", "dv:control:{b}"], 0))
    finally:
        await other_client.aclose()
    await log.aclose()
    await eventually(lambda: _count_pubsub_clients(redis, 0))


async def test_cancel_survives_a_lost_subscriber_connection(log: EventLog, redis: aioredis.Redis) -> None:
    async with log.cancellation("job") as cancelled:
        assert await redis.client_kill_filter(_type="pubsub") == 1
        # Published while the subscriber reconnects, or after: it arrives either way
        # (redis-py re-subscribes, and a confirmed re-subscription re-checks the flag).
        assert await log.request_cancel("job") is True
        await asyncio.wait_for(cancelled.wait(), 5)
        assert await redis.pubsub_numsub("dv:control:{job}") == [(b"dv:control:{job}", 1)]


async def test_watches_that_come_and_go_together_change_subscriptions_in_batches(
    log: EventLog, redis: aioredis.Redis
) -> None:
    scopes = [f"turn:{i}" for i in range(300)]
    for scope in scopes[::7]:  # requested before their owners watch: seen from the durable flag
        assert await log.request_cancel(scope) is True
    before = await _command_calls(redis)
    async with contextlib.AsyncExitStack() as stack:
        events = await asyncio.gather(*(stack.enter_async_context(log.cancellation(scope)) for scope in scopes))
        assert [scope for scope, event in zip(scopes, events, strict=True) if event.is_set()] == scopes[::7]
        channels = [f"dv:control:{{{scope}}}" for scope in scopes]
        assert await _numsub_is(redis, channels, 1)
        entered = await _command_calls(redis)
        assert await log.request_cancel(scopes[1]) is True  # a live one: the notice reaches it
        await asyncio.wait_for(events[1].wait(), 2)
    await eventually(lambda: _numsub_is(redis, channels, 0))
    left = await _command_calls(redis)
    # 300 owners, a few rounds of changes (one each, were the burst to arrive in one loop turn); the flags
    # read in as few pipelined batches of EXISTS.
    assert entered.get("subscribe", 0) - before.get("subscribe", 0) <= 5
    assert left.get("unsubscribe", 0) - entered.get("unsubscribe", 0) <= 5
    assert entered.get("exists", 0) - before.get("exists", 0) == 300


async def test_leaving_a_watch_does_not_wait_for_other_scopes_subscriptions(
    log: EventLog, redis: aioredis.Redis, redis_url: str
) -> None:
    first = log.cancellation("first")
    await first.__aenter__()
    pauser = aioredis.Redis.from_url(redis_url)
    try:
        await pauser.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # SUBSCRIBE is not answered meanwhile
        second = asyncio.create_task(_enter_and_leave(log, "second"))
        await asyncio.sleep(0.1)
        assert not second.done()  # waiting for its confirmation
        # Leaving "first" is not queued behind the subscription of "second".
        await asyncio.wait_for(first.__aexit__(None, None, None), 1)
    finally:
        await pauser.aclose()
    assert await asyncio.wait_for(second, 5) is False  # then "second" is confirmed in its turn
    await eventually(lambda: _numsub_is(redis, ["dv:control:{first}", "dv:control:{second}"], 0))


async def _enter_and_leave(log: EventLog, scope: str) -> bool:
    async with log.cancellation(scope) as cancelled:
        return cancelled.is_set()


async def _command_calls(redis: aioredis.Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def _numsub_is(redis: aioredis.Redis, channels: list[str], expected: int) -> bool:
    counts = await redis.pubsub_numsub(*channels)
    return all(count == expected for _, count in counts)


async def _count_pubsub_clients(redis: aioredis.Redis, expected: int) -> bool:
    return len(await redis.client_list(_type="pubsub")) == expected


async def test_writers_in_two_processes_and_a_reader_here(log: EventLog, redis_url: str) -> None:
    count = 150
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), redis_url, "shared", tag, str(count),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        for tag in ("w0", "w1")
    ]
    reader = asyncio.create_task(collect(log, "shared"))
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert await asyncio.wait_for(worker.stdout.readline(), 15) == b"ready\n"
        for worker in workers:  # start both at once
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
        results = [await asyncio.wait_for(worker.communicate(), 15) for worker in workers]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    assert [worker.returncode for worker in workers] == [0, 0]
    await log.append("shared", b"end", final=True)

    entries = await asyncio.wait_for(reader, 5)
    assert [e.seq for e in entries] == list(range(1, 2 * count + 2))
    for tag, (stdout, _) in zip(("w0", "w1"), results, strict=True):
        seqs = [int(s) for s in stdout.split()]
        mine = [e for e in entries if e.payload.startswith(tag.encode())]
        assert [e.seq for e in mine] == seqs
        assert [e.payload for e in mine] == [f"{tag}:{i}".encode() for i in range(count)]


async def test_delete_removes_every_key_of_the_scope(redis: aioredis.Redis) -> None:
    async with EventLog(redis, retention=100, ttl_seconds=60, prefix="t:") as log:
        await log.append("s", b"x")
        await log.append("keep", b"y")
        await log.request_cancel("s")
        assert sorted(await redis.keys("t:*s}")) == [b"t:cancel:{s}", b"t:log:{s}", b"t:logmeta:{s}"]
        assert 0 < await redis.ttl("t:log:{s}") <= 60
        assert 0 < await redis.ttl("t:logmeta:{s}") <= 60
        assert await log.delete("s") is True
        assert await redis.keys("t:*s") == []
        assert await redis.exists("t:log:{keep}") == 1
        assert await log.last_seq("s") == 0
        assert await log.delete("s") is False
        assert await log.append("s", b"again") == 1


async def test_a_cursor_into_a_deleted_or_expired_scope_is_expired(log: EventLog) -> None:
    with pytest.raises(CursorExpired) as caught:
        await collect(log, "gone", 5)
    assert caught.value.metadata == {"scope": "gone", "after_seq": "5", "first_seq": "1"}


async def test_a_follower_of_a_deleted_scope_gets_cursor_expired(log: EventLog) -> None:
    await log.append("s", b"x")
    reader = asyncio.create_task(collect(log, "s"))
    await asyncio.sleep(0.05)
    await log.delete("s")
    with pytest.raises(CursorExpired) as caught:
        await asyncio.wait_for(reader, 2)
    assert caught.value.metadata["after_seq"] == "1"


async def test_idle_followers_hold_no_connection_and_send_no_commands(
    redis: aioredis.Redis, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with EventLog(client, retention=100, ttl_seconds=60) as log:
            await log.append("idle", b"1")
            readers = [asyncio.create_task(collect(log, "idle")) for _ in range(50)]
            readers += [asyncio.create_task(collect(log, f"idle-{i}")) for i in range(20)]
            await eventually(lambda: _subscribed(log, 21))
            await asyncio.sleep(0.3)  # the last joiners finish their replay
            before = await redis.info("commandstats")
            await asyncio.sleep(1.0)
            after = await redis.info("commandstats")
            # Nothing but our own INFO ran meanwhile: no reader polls, none blocks.
            assert {name for name, stat in after.items() if stat != before.get(name)} == {"cmdstat_info"}
            assert int((await redis.info("clients"))["blocked_clients"]) == 0
            assert len(await redis.client_list(_type="pubsub")) == 1  # one subscriber for 21 scopes

            await log.append("idle", b"2", final=True)
            for reader in readers[:50]:
                assert [e.seq for e in await asyncio.wait_for(reader, 5)] == [1, 2]
            for reader in readers[50:]:
                reader.cancel()
            await asyncio.wait(readers[50:])
            assert all(reader.cancelled() for reader in readers[50:])  # CancelledError went through
            await eventually(lambda: _subscribed(log, 0))
    finally:
        await client.aclose()


async def _subscribed(log: EventLog, expected: int) -> bool:
    return log.scopes_followed == expected


async def test_an_unreachable_store_is_unavailable(tmp_path: Path) -> None:
    client = aioredis.Redis.from_url(f"unix://{tmp_path / 'nobody.sock'}")
    try:
        log = EventLog(client, retention=100, ttl_seconds=60)
        with pytest.raises(Unavailable):
            await log.append("s", b"x")
        with pytest.raises(Unavailable):
            await collect(log, "s")
    finally:
        await client.aclose()


def test_the_client_must_return_bytes(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses"):
        EventLog(aioredis.Redis.from_url(redis_url, decode_responses=True), retention=1, ttl_seconds=1)


async def test_run_cancellable_returns_the_result_or_stops_the_work_on_cancel(log: EventLog) -> None:
    async def quick() -> int:
        return 7

    assert await log.run_cancellable("job:quick", quick()) == 7

    started, stopped = asyncio.Event(), asyncio.Event()

    async def forever() -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return 0

    runner = asyncio.create_task(log.run_cancellable("job:slow", forever()))
    await started.wait()
    assert await log.request_cancel("job:slow")
    with pytest.raises(Cancelled) as caught:
        await runner
    assert caught.value.reason == "CANCELLED"
    assert stopped.is_set()


async def test_run_cancellable_runs_the_work_in_the_callers_task_with_no_task_of_its_own(log: EventLog) -> None:
    async def work() -> tuple[asyncio.Task[object] | None, set[str]]:
        current = asyncio.current_task()
        return current, {task.get_name() for task in asyncio.all_tasks() if task is not current}

    task, others = await log.run_cancellable("job:inline", work())
    assert task is asyncio.current_task()
    # Only the instance's readers of cancel notices (one, or one per node of a cluster) run besides it.
    assert {name for name in others if not name.startswith(("eventlog-control", "sharded-pubsub-"))} == set()
    assert "eventlog-control-dispatcher" in others


async def test_run_cancellable_does_not_run_work_whose_cancel_came_first(log: EventLog) -> None:
    ran = False

    async def work() -> None:
        nonlocal ran
        ran = True

    await log.append("job:early", b"started")
    assert await log.request_cancel("job:early")
    with pytest.raises(Cancelled):
        await log.run_cancellable("job:early", work())
    assert not ran


async def test_run_cancellable_lets_a_cancel_of_the_caller_through_even_with_its_own(log: EventLog) -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    runner = asyncio.create_task(log.run_cancellable("job:both", forever()))
    await started.wait()
    runner.cancel()  # the caller goes away ...
    assert await log.request_cancel("job:both")  # ... while a cancel request arrives too
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert runner.cancelled()


async def test_run_cancellable_leaves_the_callers_cancel_count_as_it_found_it(log: EventLog) -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def caller() -> int:
        with contextlib.suppress(Cancelled):
            await log.run_cancellable("job:count", forever())
        return asyncio.current_task().cancelling()  # type: ignore[union-attr]

    runner = asyncio.create_task(caller())
    await started.wait()
    assert await log.request_cancel("job:count")
    assert await runner == 0  # a later await in the caller is not cancelled by this one
