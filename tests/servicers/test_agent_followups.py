"""Turns of one conversation, in order: what the model is sent of earlier turns, and how their events stream.

The ``openai`` provider against the local server that speaks the real SSE wire format, so each test can
read the request bodies the model received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpclib.client import Channel

from daveloper.app import App
from daveloper.config import Settings
from generated.daveloper.v1 import (
    AgentServiceStub,
    ChatEvent,
    ChatRequest,
    DocumentServiceStub,
    SendMessage,
    UploadHeader,
    UploadRequest,
)
from tests.agent.openai_server import FakeOpenAI, Script, ScriptedCall
from tests.grpc_helpers import bearer

pytestmark = pytest.mark.timeout(60)

NOTES = b"""# Flux capacitor notes

## Speed

The flux capacitor engages at eighty-eight miles per hour.
"""


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test") as server:
        yield server


@pytest.fixture
def settings(settings: Settings, llm: FakeOpenAI) -> Settings:
    return settings.replace(llm_base_url=llm.url, llm_api_key="sk-test", llm_model="fake-model")


async def chat(channel: Channel, token: str, *sends: SendMessage) -> list[ChatEvent]:
    requests = [ChatRequest(send=s) for s in sends]
    return [r.event async for r in AgentServiceStub(channel).chat(requests, timeout=30, metadata=bearer(token))]


def roles(body: dict[str, Any]) -> list[str]:
    return [m["role"] for m in body["messages"]]


async def test_two_sends_back_to_back_run_in_order_and_stream_increasing_seqs(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    llm.enqueue(Script(text=[f"first{i} " for i in range(20)], delay=0.01), Script(text=["second."]))
    events = await chat(channel, token, SendMessage(conversation_id="c", text="one"),
                        SendMessage(conversation_id="c", text="two"))
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), seqs
    ends = [i for i, e in enumerate(events) if e.turn_completed is not None]
    starts = [i for i, e in enumerate(events) if e.turn_started is not None]
    assert len(starts) == len(ends) == 2
    assert starts[0] < ends[0] < starts[1] < ends[1]  # the second turn started when the first ended
    first_answer = events[ends[0]].turn_completed.text
    second_request = llm.requests[1]["messages"]
    assert [m["content"] for m in second_request[1:]] == ["one", first_answer, "two"]


async def test_a_follow_up_carries_the_earlier_turns_tool_results(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    messages = [UploadRequest(header=UploadHeader(file_name="flux.md")), UploadRequest(chunk=NOTES)]
    _ = [r async for r in DocumentServiceStub(channel).upload(messages, timeout=30, metadata=bearer(token))]
    llm.enqueue(Script(tool_calls=[ScriptedCall("search_documents", ['{"query": "flux capacitor speed"}'])]),
                Script(text=["It engages at 88 mph [1]."]),
                Script(text=["Yes, per [1]."]))
    await chat(channel, token, SendMessage(conversation_id="c", text="How fast for the flux capacitor?"))
    await chat(channel, token, SendMessage(conversation_id="c", text="Does that source say why?"))
    follow_up = llm.requests[2]
    assert roles(follow_up) == ["system", "user", "assistant", "tool", "assistant", "user"]
    call, result = follow_up["messages"][2], follow_up["messages"][3]
    assert call["tool_calls"][0]["id"] == result["tool_call_id"]
    assert "eighty-eight" in result["content"]


async def test_the_oldest_tool_results_go_first_when_over_the_budget(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    # Twelve sections of ~200 tokens: one turn's twelve passages fit the history budget (3,000), two do not.
    long_notes = "# Flux capacitor notes\n\n" + "".join(
        f"## Part {i}\n\n" + f"The flux capacitor part {i} engages at eighty-eight miles per hour. " * 10 + "\n\n"
        for i in range(12))
    messages = [UploadRequest(header=UploadHeader(file_name="flux.md")), UploadRequest(chunk=long_notes.encode())]
    _ = [r async for r in DocumentServiceStub(channel).upload(messages, timeout=30, metadata=bearer(token))]
    for question in ("first question", "second question"):
        llm.enqueue(Script(tool_calls=[ScriptedCall("search_documents", [f'{{"query": "flux {question}", '
                                                                          '"top_k": 12}'])]),
                    Script(text=[f"answer to the {question}."]))
        await chat(channel, token, SendMessage(conversation_id="c", text=question))
    llm.enqueue(Script(text=["ok."]))
    await chat(channel, token, SendMessage(conversation_id="c", text="third question"))
    last = llm.requests[-1]["messages"]
    contents = [m.get("content") for m in last]
    # Both earlier turns' words are there; the older turn's passages were dropped first.
    assert "first question" in contents
    assert "answer to the first question." in contents
    assert roles(llm.requests[-1]) == ["system", "user", "assistant", "user", "assistant", "tool", "assistant",
                                       "user"]


async def test_a_failed_turn_is_not_sent_as_an_empty_answer(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    llm.enqueue(Script(status=400))
    failed = await chat(channel, token, SendMessage(conversation_id="c", text="first try"))
    assert failed[-1].turn_failed is not None
    llm.enqueue(Script(text=["fine."]))
    await chat(channel, token, SendMessage(conversation_id="c", text="second try"))
    sent = llm.requests[-1]["messages"]
    assert all(m["content"] for m in sent if m["role"] == "assistant")
    assert [m["content"] for m in sent if m["role"] == "user"] == ["second try"]


async def test_citations_are_sent_for_the_passages_the_answer_uses_only(
    app: App, channel: Channel, token: str, llm: FakeOpenAI
) -> None:
    body = "# Notes\n\n" + "".join(f"## Part {i}\n\nThe flux capacitor part {i} is chrome.\n\n" for i in range(4))
    messages = [UploadRequest(header=UploadHeader(file_name="flux.md")), UploadRequest(chunk=body.encode())]
    _ = [r async for r in DocumentServiceStub(channel).upload(messages, timeout=30, metadata=bearer(token))]
    llm.enqueue(Script(tool_calls=[ScriptedCall("search_documents", ['{"query": "flux capacitor part"}'])]),
                Script(text=["Part two is chrome [2], so is [2]; see [9]."]))
    events = await chat(channel, token, SendMessage(conversation_id="c", text="what is chrome?"))
    result = next(e.tool_result for e in events if e.tool_result is not None)
    assert "[3]" in result.content  # the search gave more passages than the answer used
    assert [e.citation.index for e in events if e.citation is not None] == [2]
    llm.enqueue(Script(text=["As said before [2]."]))
    again = await chat(channel, token, SendMessage(conversation_id="c", text="and again?"))
    assert [e.citation.index for e in again if e.citation is not None] == [2]  # an earlier turn's passage
