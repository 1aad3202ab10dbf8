"""The offline provider: tool choice on user turns, grounded extractive answers on tool results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from daveloper.agent.llm import (
    NO_PASSAGES,
    OfflineChatModel,
    Passage,
    format_passages,
    parse_passages,
)
from daveloper.agent.llm.offline import OFFLINE_NOTICE, find_repository, find_url
from daveloper.agent.model import Message, ModelDone, ModelEvent, TextDelta, ToolCallRequest, ToolSpec
from daveloper.documents.tokens import count_tokens

pytestmark = pytest.mark.timeout(10)


def tool(name: str) -> ToolSpec:
    return ToolSpec(name, f"the {name} tool", {"type": "object", "properties": {}})


ALL_TOOLS = [tool("search_documents"), tool("scrape_url"), tool("github_repo")]

PASSAGES = format_passages([
    (1, "guide.md > Configuration",
     "Daveloper reads its settings from the environment. Set the DAVELOPER_REDIS_URL variable to point at "
     "your Redis server. The default is redis://localhost:6379/0."),
    (2, "deploy.md > Docker", "Run the image with docker run. Redis must be reachable from the container."),
    (3, "faq.md", "Cats are not supported."),
])


async def run(messages: Sequence[Message], tools: Sequence[ToolSpec] = ALL_TOOLS) -> tuple[str, ModelDone]:
    events: list[ModelEvent] = [e async for e in OfflineChatModel().stream(messages, tools=tools)]
    *deltas, done = events
    assert isinstance(done, ModelDone)
    assert all(isinstance(d, TextDelta) for d in deltas)
    return "".join(d.text for d in deltas if isinstance(d, TextDelta)), done


async def call_for(text: str, tools: Sequence[ToolSpec] = ALL_TOOLS) -> tuple[str, dict[str, str]]:
    answer, done = await run([Message("user", text)], tools)
    assert answer == ""
    assert done.finish_reason == "tool_calls"
    (call,) = done.tool_calls
    assert call.call_id == "call_offline_1"
    return call.name, json.loads(call.arguments)


def after_tool(question: str, name: str, result: str) -> list[Message]:
    call = ToolCallRequest("call_offline_1", name, "{}")
    return [Message("user", question), Message("assistant", tool_calls=(call,)),
            Message("tool", result, tool_call_id=call.call_id, name=name)]


async def test_a_url_asks_for_scrape_url() -> None:
    assert await call_for("Summarise https://example.com/docs/page?x=1, please.") == (
        "scrape_url", {"url": "https://example.com/docs/page?x=1"})


async def test_an_owner_repo_asks_for_github_repo() -> None:
    assert await call_for("What is vmagamedov/grpclib about?") == ("github_repo", {"repository": "vmagamedov/grpclib"})
    assert await call_for("compare it with vercel/next.js.") == ("github_repo", {"repository": "vercel/next.js"})


def test_paths_urls_dates_and_word_pairs_are_not_repositories() -> None:
    for text in ("open src/main.py", "see a/b/c", "on 12/05/2024", "use and/or", "input/output errors",
                 "24/7 support", "https://github.com/o/r is a URL", "./scripts/run", "docs/guide here"):
        assert find_repository(text) is None, text
    assert find_repository("`aio-libs/aiohttp`") == "aio-libs/aiohttp"
    assert find_url("no link here") is None


async def test_a_plain_question_asks_for_search_documents() -> None:
    assert await call_for("How do I configure Redis?") == ("search_documents", {"query": "How do I configure Redis?"})
    # A URL without the scrape tool falls through to a search.
    assert (await call_for("What about https://x.org?", [tool("search_documents")]))[0] == "search_documents"


async def test_without_tools_it_says_it_is_offline() -> None:
    answer, done = await run([Message("user", "How do I configure Redis?")], tools=[])
    assert answer == OFFLINE_NOTICE
    assert "offline" in answer
    assert done == ModelDone(finish_reason="stop", prompt_tokens=count_tokens("How do I configure Redis?"),
                             completion_tokens=count_tokens(answer))


async def test_passages_give_the_best_sentence_with_its_marker() -> None:
    answer, done = await run(after_tool("How do I configure the Redis URL?", "search_documents", PASSAGES))
    assert answer.startswith("From your documents: ")
    assert "Set the DAVELOPER_REDIS_URL variable to point at your Redis server. [1]" in answer
    assert "Cats" not in answer
    assert done.finish_reason == "stop"
    assert done.tool_calls == ()
    assert done.completion_tokens == count_tokens(answer)
    assert done.prompt_tokens > 0
    # Every claim carries a marker of a passage that was given.
    sentences = answer.removeprefix("From your documents: ").split("] ")
    assert 1 <= len(sentences) <= 4
    assert all(s.rstrip("]").rsplit("[", 1)[1] in {"1", "2", "3"} for s in sentences)


async def test_no_shared_words_quotes_the_top_passage() -> None:
    answer, _ = await run(after_tool("zebra?", "search_documents", PASSAGES))
    assert answer.endswith("Daveloper reads its settings from the environment. [1]")


async def test_an_empty_search_says_nothing_was_found() -> None:
    for result in (format_passages([]), ""):
        answer, _ = await run(after_tool("How do I configure Redis?", "search_documents", result))
        assert "Nothing" in answer
        assert "matches" in answer
        assert "[" not in answer


async def test_a_tool_error_is_said_plainly() -> None:
    answer, _ = await run(after_tool("https://x.org", "scrape_url", "Error: HTTP 404 from https://x.org"))
    assert answer == "scrape_url failed: HTTP 404 from https://x.org"


async def test_other_tools_are_summarised_from_their_first_lines() -> None:
    result = format_passages([(1, "vmagamedov/grpclib", "Pure-Python gRPC for asyncio.\nStars: 900\nMIT\nmore")])
    answer, _ = await run(after_tool("vmagamedov/grpclib", "github_repo", result))
    assert answer == "From github_repo: Pure-Python gRPC for asyncio. [1]"  # whole sentences, not label lines


async def test_answers_are_deterministic() -> None:
    messages = after_tool("How do I configure the Redis URL?", "search_documents", PASSAGES)
    model = OfflineChatModel()
    first = [e async for e in model.stream(messages, tools=ALL_TOOLS)]
    second = [e async for e in model.stream(messages, tools=ALL_TOOLS)]
    assert first == second
    assert len(first) > 3  # streamed in several deltas


async def test_cancel_lands_mid_answer() -> None:
    long_text = " ".join(f"Redis setting number {i} is configured here." for i in range(200))
    messages = after_tool("Which Redis setting is configured?", "search_documents",
                          format_passages([(1, "big.md", long_text)]))
    received: list[ModelEvent] = []
    # The whole answer is in-process: it must still yield so that a cancel between deltas lands.
    started = asyncio.Event()

    async def consume() -> None:
        async for event in OfflineChatModel().stream(messages, tools=ALL_TOOLS):
            received.append(event)
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert received
    assert not any(isinstance(e, ModelDone) for e in received)


def test_passages_round_trip_and_fold_blank_lines() -> None:
    passages = [(1, "guide.md > Configuration", "First line.\n\n[2] not a header\nmore"), (7, "a\nb", "x")]
    text = format_passages(passages)
    assert text == "[1] guide.md > Configuration\nFirst line.\n[2] not a header\nmore\n\n[7] a b\nx"
    assert parse_passages(text) == [Passage(1, "guide.md > Configuration", "First line.\n[2] not a header\nmore"),
                                    Passage(7, "a b", "x")]
    assert format_passages([]) == NO_PASSAGES
    assert parse_passages(NO_PASSAGES) == []
    assert parse_passages("") == []


async def test_answers_quote_whole_sentences_never_heading_paths_or_fragments() -> None:
    chunk = ("Flux capacitor notes > Speed\n\n"
             "The flux capacitor engages at eighty-eight\nmiles per hour on a dry road.\n\n"
             "### Speed limits\n\n"
             "- Speed is capped by the flux capacitor at ninety.\n\n"
             "and a speed fragment cut where the flux capacitor")
    result = format_passages([(2, "flux.md > Speed", chunk)])
    answer, _ = await run(after_tool("What speed does the flux capacitor need?", "search_documents", result))
    assert "The flux capacitor engages at eighty-eight miles per hour on a dry road. [2]" in answer
    assert "Speed is capped by the flux capacitor at ninety. [2]" in answer
    assert ">" not in answer
    assert "Speed limits" not in answer
    assert "fragment" not in answer


async def test_a_passage_of_headings_only_is_named_in_a_sentence_not_dangled() -> None:
    result = format_passages([(2, "flux.md > Speed", "Flux capacitor notes > Speed")])
    answer, _ = await run(after_tool("unrelated words", "search_documents", result))
    assert answer.endswith(".")
    assert not answer.endswith("Speed [2]")
    assert "[2]" in answer
