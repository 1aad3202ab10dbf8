"""Random frames at a socket: every case ends in a documented way, the server never errs, others carry on."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daveloper.edge import Edge
from tests.edge.client import JSON, PROTO, TYPES, connect, pack, status

pytestmark = pytest.mark.timeout(120)

DOCUMENTED_CLOSE_CODES = {1000, 1001, 1009, 4400, 4401, 4404, 4408, 4409, 4429}
METHODS = ["/daveloper.v1.SessionService/CreateSession", "/daveloper.v1.SessionService/GetSession",
           "/grpc.health.v1.Health/Watch", "/daveloper.v1.DocumentService/Upload", "/x.Y/Z", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
stream_ids = st.integers(-1, 6) | st.just(2**31) | st.sampled_from([1, 3])
structured = st.fixed_dictionaries(
    {"type": st.sampled_from([*TYPES, "bogus"])},
    optional={
        "id": stream_ids,
        "method": st.sampled_from(METHODS) | json_values,
        "message": json_values | st.just({}),
        "end": st.booleans() | json_values,
        "n": st.integers(-2, 5) | json_values,
        "credit": st.integers(-1, 3),
        "timeoutMs": st.integers(-1, 2000) | json_values,
        "metadata": st.dictionaries(st.text(max_size=10), st.lists(st.text(max_size=5), max_size=2), max_size=2)
        | json_values,
    },
)
text_frames = st.one_of(structured.map(json.dumps), json_values.map(json.dumps), st.text(max_size=30))


def _binary(frame: dict[str, Any]) -> bytes:
    kind = frame.get("type")
    if kind not in TYPES:
        return b"\x63" + json.dumps(frame).encode()
    stream_id = frame.get("id", 0)
    stream_id = stream_id if isinstance(stream_id, int) and 0 <= stream_id < 2**32 else 1
    message = frame.get("message")
    return pack(kind, stream_id, fields={k: v for k, v in frame.items() if k not in ("type", "id", "message")},
                message=message if isinstance(message, bytes) else None, end=frame.get("end") is True)


binary_frames = st.one_of(st.binary(max_size=40), structured.map(_binary),
                          st.tuples(st.sampled_from(list(TYPES.values())), st.binary(max_size=30)).map(
                              lambda t: bytes([t[0], 0, 0, 0, 0, 1]) + t[1]))
cases = st.one_of(
    st.tuples(st.just(JSON), st.lists(st.one_of(text_frames, st.binary(max_size=8)), min_size=1, max_size=5)),
    st.tuples(st.just(PROTO), st.lists(st.one_of(binary_frames, st.text(max_size=5)), min_size=1, max_size=5)),
)


async def _run_case(http: aiohttp.ClientSession, edge: Edge, protocol: str, frames: list[str | bytes]) -> None:
    client = await connect(http, edge, protocol=protocol)
    for frame in frames:
        if client.ws.closed:
            break
        if isinstance(frame, str):
            await client.ws.send_str(frame)
        else:
            await client.ws.send_bytes(frame)
    if not client.ws.closed:
        await client.send({"type": "ping", "data": "probe"})
    while True:  # the socket answers the probe, or closes with a documented code
        got = await client.recv()
        if got["type"] == "socket-closed":
            assert got["code"] in DOCUMENTED_CLOSE_CODES, got
            break
        if got["type"] == "pong" and got.get("data") == "probe":
            break
        if got["type"] == "close":
            assert got["status"]["code"] != "internal", got
    await client.ws.close()


async def test_random_frames(edge: Edge, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()

    # Hypothesis drives examples from a worker thread; each example runs on the test's loop.
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(cases)
    def check(case: tuple[str, list[str | bytes]]) -> None:
        protocol, frames = case
        asyncio.run_coroutine_threadsafe(_run_case(http, edge, protocol, frames), loop).result(timeout=30)

    with caplog.at_level(logging.INFO, logger="daveloper.edge"):
        await asyncio.to_thread(check)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    other = await connect(http, edge)
    assert status(await other.call(1, METHODS[0], {})) == {"code": "ok"}
