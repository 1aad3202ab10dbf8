"""Runtime options: set once in Redis (through ``daveloper config``), applied by every instance within seconds."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daveloper.app import open_app
from daveloper.client.config import config_command
from daveloper.config import Settings
from daveloper.errors import InvalidArgument
from daveloper.runtime import CONFIG_KEY, RuntimeConfig, set_option
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    CreateSessionRequest,
    ScraperServiceStub,
    ScrapeSpec,
    SendMessage,
    SessionServiceStub,
    StartScrapeRequest,
)
from tests.grpc_helpers import bearer, reason

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pair(settings: Settings, redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[list[Channel]]:
    """Two instances on one Redis, and a channel to each."""
    # Polling a switched-off feature is charged to the session's rate limit like any call:
    # give the polls room, so only the limit lowered at run time below refuses a turn.
    roomy = settings.replace(rate_chat_turns="600/min")
    async with (open_app(roomy.replace(data_dir=tmp_path / "a", instance_id="a")) as a,
                open_app(roomy.replace(data_dir=tmp_path / "b", instance_id="b")) as b):
        channels = [Channel(app.grpc_addr.host, app.grpc_addr.port) for app in (a, b)]
        try:
            yield channels
        finally:
            for channel in channels:
                channel.close()


async def chat(channel: Channel, token: str, conversation: str) -> list[ChatEvent]:
    requests = [ChatRequest(send=SendMessage(conversation_id=conversation, text="What is Redis for?"))]
    return [r.event async for r in AgentServiceStub(channel).chat(requests, metadata=bearer(token), timeout=30)
            if r.event is not None]


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds (within 10 s: the options are re-read every second)."""
    async with asyncio.timeout(10):
        while not await check():  # noqa: ASYNC110 - polling the service is the test
            await asyncio.sleep(0.1)


async def cli(env: dict[str, str], *args: str) -> str:
    out = io.StringIO()
    action, *rest = args
    assert await config_command(action, rest[0] if rest else None, rest[1] if len(rest) > 1 else None, env,
                                out) == 0
    return out.getvalue()


async def test_switches_and_limits_apply_on_every_instance(
    pair: list[Channel], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"DAVELOPER_REDIS_URL": redis_url}
    token = (await SessionServiceStub(pair[0]).create_session(CreateSessionRequest())).token
    assert any(e.tool_call for e in await chat(pair[1], token, "before"))  # the offline model searches

    # A tool switched off is not offered to the model: no instance calls it.
    caplog.set_level(logging.INFO, logger="daveloper.config")
    await cli(env, "set", "tool.search_documents", "off")

    async def no_tool_calls() -> bool:
        for n, channel in enumerate(pair):
            if any(e.tool_call for e in await chat(channel, token, f"c{n}")):
                return False
        return True

    await until(no_tool_calls)
    changes = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("runtime option tool.search_documents changed")]
    assert sorted(changes) == [f"runtime option tool.search_documents changed from True to False on instance {n}"
                               for n in ("a", "b")]  # logged once by each instance

    # Chat switched off: new turns are refused everywhere; switched on again, they work.
    await cli(env, "set", "chat", "off")

    async def chat_refused() -> bool:
        refusals = []
        for channel in pair:
            try:
                await chat(channel, token, "off")
            except GRPCError as exc:
                refusals.append((exc.status, reason(exc)))
        return refusals == [(Status.FAILED_PRECONDITION, "FEATURE_DISABLED")] * 2

    await until(chat_refused)
    await cli(env, "unset", "chat")
    await until(lambda: _completes(pair, token))

    # A rate limit lowered at run time: the next turn in a minute is refused.
    await cli(env, "set", "rate_chat_turns", "1/min")
    await asyncio.sleep(2.5)  # two refresh periods
    statuses = []
    for n in range(2):
        try:
            await chat(pair[n], token, f"rate{n}")
        except GRPCError as exc:
            statuses.append(exc.status)
    assert Status.RESOURCE_EXHAUSTED in statuses

    # Scraping off.
    await cli(env, "set", "scraping", "off")

    async def scrape_refused() -> bool:
        try:
            await ScraperServiceStub(pair[1]).start_scrape(
                StartScrapeRequest(spec=ScrapeSpec(urls=["https://example.com/"], max_depth=0, max_pages=1)),
                metadata=bearer(token))
        except GRPCError as exc:
            return exc.status is Status.FAILED_PRECONDITION and reason(exc) == "FEATURE_DISABLED"
        return False

    await until(scrape_refused)
    listing = await cli(env, "list")
    assert "scraping" in listing
    assert "off (set)" in listing
    assert "max_tool_rounds" in listing
    assert "(default)" in listing


async def _completes(pair: list[Channel], token: str) -> bool:
    try:
        events = [await chat(channel, token, "on-again") for channel in pair]
    except GRPCError:
        return False
    return all(e[-1].turn_completed is not None for e in events)


async def test_invalid_values_and_unknown_options_are_refused(redis: aioredis.Redis) -> None:
    for name, value in (("max_tool_rounds", "99"), ("chat", "maybe"), ("rate_calls", "lots"), ("nope", "on")):
        with pytest.raises(InvalidArgument):
            await set_option(redis, name, value, by="test")
    assert await redis.hlen("dv:config") == 0


async def test_scraping_off_also_switches_off_the_web_tools(redis: aioredis.Redis, settings: Settings) -> None:
    runtime = RuntimeConfig(redis, settings)
    await runtime.refresh()
    assert all(runtime.tool_enabled(tool) for tool in ("search_documents", "scrape_url", "github_repo"))
    await set_option(redis, "scraping", "off", by="test")
    await runtime.refresh()
    assert [runtime.tool_enabled(tool) for tool in ("search_documents", "scrape_url", "github_repo")] == [
        True, False, False]
    await set_option(redis, "max_tool_rounds", "3", by="test")
    await runtime.refresh()
    assert runtime.count("max_tool_rounds") == 3


async def test_a_bad_value_written_around_the_command_is_ignored(
    redis: aioredis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = RuntimeConfig(redis, settings)
    await set_option(redis, "quota_concurrent_turns", "7", by="test")
    await runtime.refresh()
    await redis.hset(CONFIG_KEY, "quota_concurrent_turns", "-1")
    await runtime.refresh()
    assert runtime.count("quota_concurrent_turns") == settings.quota_concurrent_turns  # back to the default
    assert any("ignoring invalid runtime option quota_concurrent_turns" in r.getMessage() for r in caplog.records)


def test_the_config_command_runs(redis_url: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DAVELOPER_")},
           "DAVELOPER_REDIS_URL": redis_url}
    done = subprocess.run([sys.executable, "-m", "daveloper", "config", "set", "uploads", "off"],
                          capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "uploads = False" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "daveloper", "config", "set", "uploads"],
                         capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode == 2
    assert "needs a NAME and a VALUE" in bad.stderr
    subprocess.run([sys.executable, "-m", "daveloper", "config", "unset", "uploads"], env=env, timeout=30,
                   check=True, capture_output=True)
