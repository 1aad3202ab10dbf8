"""A turn's work: its history, its model rounds and the tool calls they ask for, every event on the log.

The model streams text, which is coalesced onto the log (:mod:`daveloper.agent.coalesce`);
a round that asks for tools gets their results (search hits become numbered
passages, which the answer cites as [n]) and the next round goes on, up to
``max_tool_rounds``. How a turn starts, ends and is accounted is
:mod:`daveloper.agent.turns`; this module only does its work, through ``emit``.
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Awaitable, Callable

from opentelemetry.trace import SpanKind

from daveloper.agent.coalesce import TextCoalescer
from daveloper.agent.conversations import Conversations
from daveloper.agent.history import carried_history, last_passage_number
from daveloper.agent.llm.passages import format_passages
from daveloper.agent.model import ChatModel, Message, ModelDone, TextDelta, ToolCallRequest, ToolSpec
from daveloper.agent.retry import retry_unavailable
from daveloper.agent.running import RunningTurn
from daveloper.agent.settings import AgentSettings
from daveloper.agent.tools import Toolbox
from daveloper.errors import Unavailable
from daveloper.infra.redis import redis_call
from daveloper.metrics import Metrics
from daveloper.tracing import span
from generated.daveloper.v1 import (
    Citation,
    FinishReason,
    SourceLocation,
    TokenDelta,
    ToolCall,
    ToolResult,
)

__all__ = ["Emit", "TurnRounds"]


#: Appends one event of a turn (``emit(turn, token_delta=...)``, a ``ChatEvent`` field); returns its seq.
Emit = Callable[..., Awaitable[int]]


class TurnRounds:
    """Runs a turn's rounds; every event goes out through ``emit``."""

    def __init__(self, *, conversations: Conversations, model: ChatModel, tools: Toolbox, settings: AgentSettings,
                 metrics: Metrics, emit: Emit, model_called: Callable[[RunningTurn], None],
                 limit: Callable[[str, int], int]) -> None:
        self._conversations = conversations
        self._model = model
        self._tools = tools
        self._settings = settings
        self._metrics = metrics
        self._first_event = metrics.llm_first_event.labels(settings.provider)
        self._emit = emit
        #: Told when a turn's model is called (its start is over: see :mod:`daveloper.agent.admission`).
        self._model_called = model_called
        self._limit = limit

    async def _history(self, turn: RunningTurn) -> list[Message]:
        past_turns = [] if turn.fresh else await retry_unavailable(
            lambda: redis_call(self._conversations.turns(turn.session_id, turn.conversation_id, last=50)),
            seconds=self._settings.redis_retry_seconds, what="turn history")
        earlier = carried_history([p for p in past_turns if p.id != turn.record.id], self._settings.history_tokens)
        # Citation numbers go on from the carried passages', so a follow-up's [n] names one passage.
        turn.citations = last_passage_number(past_turns)
        turn.earlier_citations = {c.index: c for p in past_turns for c in p.citations}
        return [Message("system", self._settings.system_prompt), *earlier, Message("user", turn.record.user_text)]

    async def run(self, turn: RunningTurn) -> FinishReason:
        """The turn's model rounds, with the tool calls they ask for; how the last one finished."""
        messages = await self._history(turn)
        tools = self._tools.specs(turn.options.tools)
        for _ in range(self._limit("max_tool_rounds", self._settings.max_tool_rounds) + 1):
            done = await self._stream(turn, messages, tools)
            if not done.tool_calls:
                return FinishReason.LENGTH if done.finish_reason == "length" else FinishReason.STOP
            messages.append(Message("assistant", "", tool_calls=done.tool_calls))
            for call in done.tool_calls:
                messages.append(await self._call_tool(turn, call))
        return FinishReason.TOOL_LIMIT

    async def _stream(self, turn: RunningTurn, messages: list[Message], tools: list[ToolSpec]) -> ModelDone:
        """One model round; text deltas are coalesced onto the log (see :mod:`daveloper.agent.coalesce`)."""
        provider = self._settings.provider
        requested, done = time.perf_counter(), None

        async def emit_text(text: str) -> int:
            return await self._emit(turn, token_delta=TokenDelta(text=text))

        async with TextCoalescer(emit_text, chars=self._settings.coalesce_chars,
                                 seconds=self._settings.coalesce_seconds,
                                 immediate_first=turn.first_token is None) as coalescer:
            with span("llm.stream", SpanKind.CLIENT, **{"gen_ai.system": provider}), \
                    self._metrics.timed("llm", provider):
                self._model_called(turn)
                # aclosing: leaving early (an error, a cancel) closes the model stream and its upstream request.
                async with contextlib.aclosing(self._model.stream(
                    messages, tools=tools, model=turn.options.model or self._settings.model,
                    temperature=turn.options.temperature, max_tokens=turn.options.max_tokens,
                    session_id=turn.session_id,
                )) as events:
                    async for event in events:
                        if requested:
                            self._first_event.observe(time.perf_counter() - requested)
                            requested = 0.0
                        if isinstance(event, TextDelta):
                            if turn.first_token is None:
                                turn.first_token = time.perf_counter()
                            turn.text.append(event.text)
                            coalescer.add(event.text)
                        else:
                            done = event
            # The rest goes out with the round's next event (a tool call, or the turn's end), in one append.
            turn.unsent = await coalescer.take()
        if done is None:
            raise Unavailable("the language model stream ended without finishing", reason="LLM_UNAVAILABLE",
                              retry_after=1.0)
        turn.prompt_tokens += done.prompt_tokens
        turn.completion_tokens += done.completion_tokens
        turn.redactions += done.redactions
        return done

    async def _call_tool(self, turn: RunningTurn, call: ToolCallRequest) -> Message:
        await self._emit(turn, tool_call=ToolCall(call_id=call.call_id, name=call.name,
                                                  arguments_json=call.arguments))
        with span(f"tool.{call.name}"):
            outcome = await self._tools.call(turn.session_id, call.name, call.arguments,
                                             document_ids=turn.options.document_ids)
        tool = call.name if call.name in self._tools.names else "unknown"  # a model may make names up
        self._metrics.tool_calls.labels(tool, "error" if outcome.is_error else "ok").inc()
        self._metrics.tool_seconds.labels(tool).observe(outcome.seconds)
        content = outcome.content
        if outcome.hits:
            passages = []
            for hit in outcome.hits:
                turn.citations += 1
                title = " > ".join([hit.document_name, *hit.heading_path[-1:]])
                passages.append((turn.citations, title, hit.text))
                citation = Citation(
                    index=turn.citations, document_id=hit.document_id, chunk_id=hit.chunk_id, title=title,
                    location=SourceLocation(heading_path=list(hit.heading_path), page=hit.page,
                                            start_line=hit.start_line, end_line=hit.end_line,
                                            url=hit.source_uri if hit.source_uri.startswith(("http://", "https://"))
                                            else ""),
                    snippet=hit.text[:300], score=hit.score)
                turn.passages[citation.index] = citation
            content = format_passages(passages)
        result = ToolResult(call_id=call.call_id, name=call.name, content=content, is_error=outcome.is_error,
                            duration=datetime.timedelta(seconds=outcome.seconds))
        turn.record.tool_calls.append(ToolCall(call_id=call.call_id, name=call.name, arguments_json=call.arguments))
        turn.record.tool_results.append(result)
        await self._emit(turn, tool_result=result)
        return Message("tool", content, tool_call_id=call.call_id, name=call.name)
