"""Circuit breakers: the state machine on a fake clock, then the LLM endpoint and GitHub failing for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from yarl import URL

from daveloper.agent.llm import OpenAIChatModel
from daveloper.app import App, open_app
from daveloper.breaker import BreakerMap, CircuitBreaker, CircuitState
from daveloper.config import Settings
from daveloper.errors import InvalidArgument, NotFound, Unavailable
from daveloper.metrics import METRICS
from daveloper.scraper.fetcher import Fetcher, FetchLimits, open_http_session
from daveloper.scraper.github import GitHubClient
from daveloper.scraper.safety import AddressPolicy
from generated.daveloper.v1 import AgentServiceStub, ChatEvent, ChatRequest, SendMessage
from tests.agent.openai_server import FakeOpenAI, Script
from tests.grpc_helpers import bearer
from tests.scraper.github_server import FakeGitHub
from tests.test_cli import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused(breaker: CircuitBreaker) -> Unavailable:
    with pytest.raises(Unavailable) as caught:
        breaker.check()
    assert caught.value.reason == "CIRCUIT_OPEN"
    return caught.value


def test_opens_after_consecutive_failures_and_recovers_through_one_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failures=3, reset_seconds=10, clock=clock, report=False)
    for _ in range(2):
        breaker.check()
        breaker.outcome(Unavailable("down"))
    breaker.check()
    breaker.outcome(None)  # a success in between resets the count
    for _ in range(3):
        breaker.check()
        breaker.outcome(TimeoutError())
    assert breaker.state is CircuitState.OPEN
    assert breaker.open
    assert refused(breaker).retry_after == pytest.approx(10)
    clock.now += 4
    assert refused(breaker).retry_after == pytest.approx(6)

    clock.now += 6
    breaker.check()  # the probe goes through ...
    assert breaker.state is CircuitState.HALF_OPEN
    refused(breaker)  # ... alone
    breaker.outcome(Unavailable("still down"))
    assert breaker.state is CircuitState.OPEN  # one failed probe re-opens at once
    clock.now += 10
    breaker.check()
    breaker.outcome(None)
    assert breaker.state is CircuitState.CLOSED
    breaker.check()


def test_an_upstream_that_answers_no_is_healthy() -> None:
    breaker = CircuitBreaker("unit", failures=1, clock=Clock(), report=False)
    for answer in (InvalidArgument("bad request"), NotFound("no such repo"), ValueError("parsing")):
        breaker.check()
        breaker.outcome(answer)
    assert breaker.state is CircuitState.CLOSED


async def test_a_cancelled_probe_lets_the_next_one_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failures=1, reset_seconds=1, clock=clock, report=False)
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("refused")
    clock.now += 1
    with pytest.raises(asyncio.CancelledError):
        async with breaker.guard():
            raise asyncio.CancelledError
    async with breaker.guard():
        pass
    assert breaker.state is CircuitState.CLOSED


def test_per_host_breakers_are_independent_and_bounded() -> None:
    hosts = BreakerMap("unit_hosts", size=2, failures=1, clock=Clock())
    hosts["down.example"].failure()
    assert hosts["down.example"].open
    assert not hosts["up.example"].open
    assert hosts.open_count == 1
    hosts["third.example"].check()  # the least recently used entry goes
    assert len(hosts) == 2
    assert METRICS.registry.get_sample_value("daveloper_circuits_open", {"name": "unit_hosts"}) == 0


# ---- the LLM endpoint, through the real app and the openai SDK -------------------------------------------------

@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


@pytest.fixture
async def app(settings: Settings, redis: aioredis.Redis, llm: FakeOpenAI) -> AsyncIterator[App]:
    model = OpenAIChatModel(base_url=llm.url, api_key="sk-test", default_model="m", max_retries=0)
    configured = settings.replace(breaker_failures=2, breaker_reset_seconds=1.0, llm_first_event_seconds=0.5)
    async with open_app(configured, chat_model=model) as running:
        running.health._interval = 0.05
        yield running
    await model.aclose()


async def turn(channel: Channel, token: str, conversation: str) -> ChatEvent:
    requests = [ChatRequest(send=SendMessage(conversation_id=conversation, text="hello?", options=None))]
    events = [r.event async for r in AgentServiceStub(channel).chat(requests, metadata=bearer(token), timeout=30)]
    assert events[-1] is not None
    return events[-1]


async def health(channel: Channel, service: str) -> object:
    return (await HealthStub(channel).Check(HealthCheckRequest(service=service), timeout=5)).status


async def until_health(channel: Channel, service: str, wanted: object) -> None:
    async with asyncio.timeout(10):
        while await health(channel, service) != wanted:  # noqa: ASYNC110 - polling the RPC
            await asyncio.sleep(0.05)


async def test_a_failing_model_endpoint_is_refused_fast_then_recovers(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    llm.fallback = Script(status=503)
    for n in range(2):
        failed = (await turn(channel, token, f"f{n}")).turn_failed
        assert failed is not None
        assert failed.failure is not None
        assert failed.failure.reason == "LLM_UNAVAILABLE"
    assert len(llm.requests) == 2

    refusal = (await turn(channel, token, "f2")).turn_failed
    assert refusal is not None
    assert refusal.failure is not None
    assert refusal.failure.reason == "CIRCUIT_OPEN"
    assert len(llm.requests) == 2  # refused without asking the endpoint
    assert METRICS.registry.get_sample_value("daveloper_circuit_state", {"name": "llm"}) == 2
    # Chat is not serving, the rest of the server is.
    await until_health(channel, "daveloper.v1.AgentService", HealthCheckResponse.NOT_SERVING)
    assert await health(channel, "") == HealthCheckResponse.SERVING
    async with aiohttp.ClientSession() as http, http.get(f"{app.edge.url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["dependencies"]["llm"] == "not_serving"

    llm.fallback = Script(text=["Back ", "again."])
    await asyncio.sleep(1.0)  # the breaker's reset period
    completed = (await turn(channel, token, "f3")).turn_completed
    assert completed is not None
    assert completed.text == "Back again."
    await until_health(channel, "daveloper.v1.AgentService", HealthCheckResponse.SERVING)
    assert METRICS.registry.get_sample_value("daveloper_circuit_state", {"name": "llm"}) == 0


async def test_a_stalled_model_endpoint_fails_the_round_with_unavailable(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    llm.fallback = Script(text=["late"], delay=5)
    failed = (await turn(channel, token, "s1")).turn_failed
    assert failed is not None
    assert failed.failure is not None
    assert failed.failure.reason == "UPSTREAM_TIMEOUT"
    assert failed.failure.code == 14  # UNAVAILABLE


# ---- GitHub ----------------------------------------------------------------------------------------------------

async def test_github_failing_opens_its_breaker(redis: aioredis.Redis) -> None:
    async with FakeGitHub() as github, aiohttp.ClientSession() as session:
        breaker = CircuitBreaker("github-test", failures=1, reset_seconds=60, report=False)
        client = GitHubClient(session, redis, base_url=github.url, token="ghp_test", timeout=5, breaker=breaker)
        github.fail(502, times=3)  # every attempt of one request
        with pytest.raises(Unavailable) as first:
            await client.repository("octo/hello")
        assert first.value.reason == "GITHUB_UNAVAILABLE"
        asked = len(github.requests)
        with pytest.raises(Unavailable) as second:
            await client.repository("octo/hello")
        assert second.value.reason == "CIRCUIT_OPEN"
        assert len(github.requests) == asked


async def test_a_dead_web_host_is_refused_fast_and_others_are_not() -> None:
    async def up(request: web.Request) -> web.Response:
        return web.Response(text="up")

    dead_port, live = free_port(), web.Application()
    live.router.add_get("/", up)
    runner = web.AppRunner(live)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    live_port = runner.addresses[0][1]
    limits = FetchLimits(retries=0, host_failures=2, host_reset_seconds=60, timeout_seconds=2)
    policy = AddressPolicy.from_entries([f"127.0.0.1:{dead_port}", f"localhost:{live_port}"])
    try:
        async with open_http_session(policy, limits) as http:
            fetcher = Fetcher(http, policy, limits)
            dead = URL(f"http://127.0.0.1:{dead_port}/")
            for _ in range(2):
                with pytest.raises(Unavailable) as failed:
                    await fetcher.fetch(dead)
                assert failed.value.reason == "CONNECTION_FAILED"
            with pytest.raises(Unavailable) as refused_fast:
                await fetcher.fetch(dead)
            assert refused_fast.value.reason == "CIRCUIT_OPEN"
            assert (await fetcher.fetch(URL(f"http://localhost:{live_port}/"))).status == 200
            assert fetcher.breakers.open_count == 1
            await fetcher.aclose()
    finally:
        await runner.cleanup()
