"""Circuit breakers: the state machine on a fake clock, then the LLM endpoint and GitHub failing for real."""

from __future__ import annotations

import asyncio
import logging
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
from daveloper.agent.llm.guarded import GuardedChatModel, is_model_failure
from daveloper.agent.model import Message, ModelDone, ModelEvent
from daveloper.app import App, open_app
from daveloper.breaker import BreakerMap, BreakerProbe, CircuitBreaker, CircuitState
from daveloper.config import Settings
from daveloper.errors import DaveloperError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from daveloper.metrics import Metrics
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


def state(breaker: CircuitBreaker) -> CircuitState:
    """Read afresh (mypy would keep an ``assert breaker.state is ...`` narrowing across calls)."""
    return breaker.state


def refused(breaker: CircuitBreaker) -> Unavailable:
    with pytest.raises(Unavailable) as caught:
        breaker.check()
    assert caught.value.reason == "CIRCUIT_OPEN"
    return caught.value


def test_opens_after_consecutive_failures_and_recovers_through_one_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failures=3, reset_seconds=10, clock=clock)
    for _ in range(2):
        breaker.check()
        breaker.outcome(Unavailable("down"))
    breaker.check()
    breaker.outcome(None)  # a success in between resets the count
    for _ in range(3):
        breaker.check()
        breaker.outcome(TimeoutError())
    assert state(breaker) is CircuitState.OPEN
    assert breaker.open
    assert refused(breaker).retry_after == pytest.approx(10)
    clock.now += 4
    assert refused(breaker).retry_after == pytest.approx(6)

    clock.now += 6
    breaker.check()  # the probe goes through ...
    assert state(breaker) is CircuitState.HALF_OPEN
    refused(breaker)  # ... alone
    breaker.outcome(Unavailable("still down"))
    assert state(breaker) is CircuitState.OPEN  # one failed probe re-opens at once
    clock.now += 10
    breaker.check()
    breaker.outcome(None)
    assert state(breaker) is CircuitState.CLOSED
    breaker.check()


def test_an_upstream_that_answers_no_is_healthy() -> None:
    breaker = CircuitBreaker("unit", failures=1, clock=Clock())
    for answer in (InvalidArgument("bad request"), NotFound("no such repo"), ValueError("parsing")):
        breaker.check()
        breaker.outcome(answer)
    assert state(breaker) is CircuitState.CLOSED


async def test_a_cancelled_probe_lets_the_next_one_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failures=1, reset_seconds=1, clock=clock)
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("refused")
    clock.now += 1
    with pytest.raises(asyncio.CancelledError):
        async with breaker.guard():
            raise asyncio.CancelledError
    async with breaker.guard():
        pass
    assert state(breaker) is CircuitState.CLOSED


def test_state_changes_reach_listeners_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    heard: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker("unit", failures=1, reset_seconds=5, clock=clock,
                             listeners=[lambda b, old, new: heard.append((b.name, old, new))])
    caplog.set_level(logging.INFO, logger="daveloper.breaker")
    assert breaker.state == "closed"
    breaker.check()
    breaker.outcome(ConnectionError("refused"))
    assert breaker.state == "open"
    clock.now += 5
    breaker.check()
    assert breaker.state == "half_open"
    breaker.outcome(None)
    assert heard == [("unit", "closed", "open"), ("unit", "open", "half_open"), ("unit", "half_open", "closed")]
    assert [CircuitState(new).level for _, _, new in heard] == [2, 1, 0]
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "daveloper.breaker"]
    assert logged[0][0] == logging.WARNING
    assert logged[0][1].startswith("circuit unit open")
    assert logged[-1] == (logging.INFO, "circuit unit closed")


def test_a_listener_that_fails_does_not_change_the_outcome() -> None:
    def broken(breaker: CircuitBreaker, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("observer bug")

    breaker = CircuitBreaker("unit", failures=1, clock=Clock())
    breaker.on_change(broken)
    breaker.failure()
    assert state(breaker) is CircuitState.OPEN


def test_opens_when_the_failure_ratio_in_the_window_is_reached() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failures=100, failure_ratio=0.5, window_seconds=10, min_calls=4, clock=clock)
    for failed in (True, True, True):  # too few calls to judge
        breaker.outcome(TimeoutError() if failed else None)
    assert state(breaker) is CircuitState.CLOSED
    clock.now += 11  # those slide out of the window
    for failed in (False, True, False, False, True):
        breaker.outcome(TimeoutError() if failed else None)
        assert state(breaker) is CircuitState.CLOSED  # at most 2 of 5
    breaker.outcome(TimeoutError())  # 3 of 6
    assert state(breaker) is CircuitState.OPEN
    assert refused(breaker).metadata == {"upstream": "unit"}


async def test_a_call_that_outlives_its_timeout_is_a_failure() -> None:
    breaker = CircuitBreaker("unit", failures=2, reset_seconds=60, timeout=0.05, clock=Clock())
    with pytest.raises(Unavailable) as timed_out:
        async with breaker.guard():
            await asyncio.Event().wait()
    assert timed_out.value.reason == "UPSTREAM_TIMEOUT"
    assert timed_out.value.metadata == {"upstream": "unit"}
    assert state(breaker) is CircuitState.CLOSED
    with pytest.raises(TimeoutError):  # the block's own timeout passes through, and counts
        async with breaker.guard(within=60):
            raise TimeoutError
    assert state(breaker) is CircuitState.OPEN


def test_per_host_breakers_are_independent_and_bounded() -> None:
    metrics = Metrics()
    hosts = BreakerMap("unit_hosts", size=2, failures=1, clock=Clock(), metrics=metrics)
    hosts["down.example"].failure()
    assert hosts["down.example"].open
    assert not hosts["up.example"].open
    assert hosts.open_count == 1
    hosts["third.example"].check()  # the least recently used entry goes
    assert len(hosts) == 2
    assert metrics.registry.get_sample_value("daveloper_circuits_open", {"name": "unit_hosts"}) == 0


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
    assert app.metrics.registry.get_sample_value("daveloper_circuit_state", {"name": "llm"}) == 2
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
    assert app.metrics.registry.get_sample_value("daveloper_circuit_state", {"name": "llm"}) == 0


async def test_a_stalled_model_endpoint_fails_the_round_with_unavailable(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    llm.fallback = Script(text=["late"], delay=5)
    failed = (await turn(channel, token, "s1")).turn_failed
    assert failed is not None
    assert failed.failure is not None
    assert failed.failure.reason == "UPSTREAM_TIMEOUT"
    assert failed.failure.code == 14  # UNAVAILABLE


async def stream_once(model: GuardedChatModel) -> list[ModelEvent]:
    return [event async for event in model.stream([Message(role="user", content="hi")])]


@pytest.fixture
async def guarded(llm: FakeOpenAI) -> AsyncIterator[tuple[GuardedChatModel, Clock]]:
    clock = Clock()
    breaker = CircuitBreaker("llm-test", failures=2, reset_seconds=30, classify=is_model_failure, clock=clock)
    inner = OpenAIChatModel(base_url=llm.url, api_key="sk-test", default_model="m", max_retries=0)
    yield GuardedChatModel(inner, breaker, first_event_seconds=0.3), clock
    await inner.aclose()


@pytest.mark.parametrize(("failing", "error"), [(Script(status=429), ResourceExhausted),
                                                (Script(text=["late"], delay=5), Unavailable)],
                         ids=["rate-limited", "slow"])
async def test_a_rate_limited_or_slow_endpoint_opens_the_breaker_and_a_probe_closes_it(
    guarded: tuple[GuardedChatModel, Clock], llm: FakeOpenAI, failing: Script, error: type[DaveloperError]
) -> None:
    model, clock = guarded
    llm.fallback = failing
    for _ in range(2):
        with pytest.raises(error):
            await stream_once(model)
    assert state(model.breaker) is CircuitState.OPEN
    asked = len(llm.requests)
    with pytest.raises(Unavailable) as refusal:
        await stream_once(model)
    assert refusal.value.reason == "CIRCUIT_OPEN"
    assert refusal.value.retry_after == pytest.approx(30)
    assert len(llm.requests) == asked  # refused without asking the endpoint

    llm.fallback = Script(text=["fine"])
    clock.now += 30
    events = await stream_once(model)
    assert isinstance(events[-1], ModelDone)
    assert len(llm.requests) == asked + 1
    assert state(model.breaker) is CircuitState.CLOSED


async def test_a_request_the_endpoint_rejects_does_not_open_the_breaker(
    guarded: tuple[GuardedChatModel, Clock], llm: FakeOpenAI
) -> None:
    model, _ = guarded
    llm.fallback = Script(status=400)
    for _ in range(3):
        with pytest.raises(InvalidArgument):
            await stream_once(model)
    assert state(model.breaker) is CircuitState.CLOSED


async def test_the_reachability_probe_asks_the_endpoint_through_the_breaker(llm: FakeOpenAI) -> None:
    inner = OpenAIChatModel(base_url=llm.url, api_key="sk-test", default_model="m", max_retries=0)
    clock = Clock()
    breaker = CircuitBreaker("llm-probe", failures=2, reset_seconds=30, clock=clock)
    probe = BreakerProbe("llm", breaker, request=inner.ping, every=0)
    try:
        assert probe.name == "llm"
        assert await probe.check()
        assert llm.listings == 1
        llm.models_status = 503
        assert not await probe.check()
        assert not await probe.check()
        assert state(breaker) is CircuitState.OPEN
        assert not await probe.check()
        assert llm.listings == 3  # open: no request
        llm.models_status = None
        clock.now += 30
        assert await probe.check()  # the half-open probe call
        assert state(breaker) is CircuitState.CLOSED
        cached = BreakerProbe(breaker.name, breaker, request=inner.ping, every=3600)
        assert await cached.check()
        assert await cached.check()
        assert llm.listings == 5
    finally:
        await inner.aclose()


async def test_readiness_reports_an_unreachable_model_endpoint_but_stays_up(
    settings: Settings, redis: aioredis.Redis, llm: FakeOpenAI
) -> None:
    model = OpenAIChatModel(base_url=llm.url, api_key="sk-test", default_model="m", max_retries=0)
    configured = settings.replace(llm_probe_seconds=0.05, breaker_failures=1000)
    async with open_app(configured, chat_model=model) as running, aiohttp.ClientSession() as http:
        running.health._interval = 0.05
        channel = Channel(running.grpc_addr.host, running.grpc_addr.port)
        try:
            async with http.get(f"{running.edge.url}/readyz") as response:
                assert (await response.json())["dependencies"]["llm"] == "serving"
            llm.models_status = 503
            await until_health(channel, "daveloper.v1.AgentService", HealthCheckResponse.NOT_SERVING)
            assert await health(channel, "") == HealthCheckResponse.SERVING
            async with http.get(f"{running.edge.url}/readyz") as response:
                assert response.status == 200
                assert (await response.json())["dependencies"]["llm"] == "not_serving"
            llm.models_status = None
            await until_health(channel, "daveloper.v1.AgentService", HealthCheckResponse.SERVING)
        finally:
            channel.close()
    await model.aclose()


# ---- GitHub ----------------------------------------------------------------------------------------------------

async def test_github_failing_opens_its_breaker(redis: aioredis.Redis) -> None:
    async with FakeGitHub() as github, aiohttp.ClientSession() as session:
        breaker = CircuitBreaker("github-test", failures=1, reset_seconds=60)
        client = GitHubClient(session, redis, base_url=github.url, token="ghp_test", timeout=5, breaker=breaker)
        github.fail(502, times=3)  # every attempt of one request
        with pytest.raises(Unavailable) as first:
            await client.repository("octo/hello")
        assert first.value.reason == "GITHUB_UNAVAILABLE"
        asked = len(github.requests)
        with pytest.raises(Unavailable) as second:
            await client.repository("octo/hello")
        assert second.value.reason == "CIRCUIT_OPEN"
        assert second.value.metadata == {"upstream": "github-test"}
        assert len(github.requests) == asked


async def test_github_recovers_through_a_probe_after_the_cool_down(redis: aioredis.Redis) -> None:
    clock = Clock()
    async with FakeGitHub() as github, aiohttp.ClientSession() as session:
        breaker = CircuitBreaker("github-test", failures=1, reset_seconds=60, clock=clock)
        client = GitHubClient(session, redis, base_url=github.url, token="ghp_test", timeout=5, breaker=breaker)
        github.fail(503, times=3)
        with pytest.raises(Unavailable):
            await client.repository("octo/hello")
        clock.now += 59
        with pytest.raises(Unavailable) as refusal:
            await client.repository("octo/hello")
        assert refusal.value.reason == "CIRCUIT_OPEN"
        assert refusal.value.retry_after == pytest.approx(1)
        clock.now += 1
        assert (await client.repository("octo-org/hello-world")).full_name == "octo-org/hello-world"
        assert state(breaker) is CircuitState.CLOSED


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
