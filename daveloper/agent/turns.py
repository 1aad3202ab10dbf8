"""Running a chat turn: model rounds, tool calls, citations, every event on the log.

A turn is a background job: it keeps running when its client disconnects, and
every event it produces goes to the conversation's event log (scope
``conv:<session>:<conversation>``), so ``Watch`` replays and tails it from any
instance. A cancel, from any connection or instance, arrives through the
control channel of scope ``turn:<id>``; the owner then cancels the model
stream (which closes the upstream HTTP request), keeps the partial answer and
completes the turn with finish reason ``cancelled``.

Token deltas are coalesced: text is buffered until ``coalesce_chars`` have
arrived or ``coalesce_seconds`` have passed since the oldest pending piece (loop
time), so the event rate stays bounded however fast the model streams and
however busy the server is; a turn's first text goes out at once. The
concatenated text is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry.trace import SpanKind

from daveloper.agent.admission import TurnAdmission
from daveloper.agent.coalesce import TextCoalescer
from daveloper.agent.conversations import Conversations, now, parse_conversation
from daveloper.agent.history import carried_history, cited_passages, last_passage_number
from daveloper.agent.llm.passages import format_passages
from daveloper.agent.model import ChatModel, Message, ModelDone, TextDelta, ToolCallRequest, ToolSpec
from daveloper.agent.queue import ConversationQueue
from daveloper.agent.retry import retry_unavailable
from daveloper.agent.running import RunningTurn, conversation_scope, observe_end, turn_scope
from daveloper.agent.tools import Toolbox
from daveloper.errors import Cancelled, DaveloperError, NotFound, ResourceExhausted, Unavailable, to_failure
from daveloper.eventlog import EventLog
from daveloper.infra.redis import redis_call
from daveloper.jobs import BackgroundJobs
from daveloper.leases import LeaseSet
from daveloper.metrics import METRICS, Metrics
from daveloper.ownership import WorkLeases
from daveloper.tracing import span
from generated.daveloper.v1 import (
    ChatEvent,
    ChatOptions,
    Citation,
    Conversation,
    FinishReason,
    SourceLocation,
    TokenDelta,
    ToolCall,
    ToolResult,
    Turn,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    TurnState,
    Usage,
)

__all__ = ["Agent", "AgentSettings", "conversation_scope", "turn_scope"]

log = logging.getLogger("daveloper.agent")

DEFAULT_SYSTEM_PROMPT = (
    "You are Daveloper, an assistant for software developers. Answer from the user's documents when "
    "they are relevant: call search_documents, then cite passages as [n]. Say so when you do not know."
)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tool_rounds: int = 4
    history_tokens: int = 3000
    coalesce_chars: int = 48
    coalesce_seconds: float = 0.015
    model: str = ""
    owner: str = ""
    #: The chat provider's name, for metrics.
    provider: str = ""
    #: Turns one session may run at once (0: no limit).
    max_concurrent_turns: int = 0
    #: Turns this instance runs at once; past it new turns are refused (0: no limit).
    max_running_turns: int = 0
    #: Turns this instance may be starting at once (admitted, model not yet called); past it new turns are
    #: refused (0: no limit). Starting is where a turn's CPU goes: this bounds the first token's wait in a burst.
    max_starting_turns: int = 0
    #: The retry delay a refused turn is told (RetryInfo).
    saturated_retry_seconds: float = 1.0
    #: How long a running turn retries its writes while Redis does not answer, before it fails.
    redis_retry_seconds: float = 15.0


class Agent:
    """Starts turns and runs them to completion in the background."""

    def __init__(self, *, events: EventLog, conversations: Conversations, model: ChatModel, tools: Toolbox,
                 jobs: BackgroundJobs, settings: AgentSettings, leases: LeaseSet | None = None,
                 work: WorkLeases | None = None, limits: Callable[[str], int] | None = None,
                 metrics: Metrics | None = None) -> None:
        self._events = events
        self._metrics = metrics = metrics or METRICS
        self._first_event = metrics.llm_first_event.labels(settings.provider)
        #: Limits changed at run time (``max_tool_rounds``, ``quota_concurrent_turns``), else the settings'.
        self._limits = limits
        #: Leases on running turns, so another instance fails them if this one dies.
        self._work = work
        #: Running turns per session, for ``max_concurrent_turns``.
        self.leases = leases
        self._conversations = conversations
        self._model = model
        self._tools = tools
        self._jobs = jobs
        self._settings = settings
        #: Turns of a conversation run one at a time, in arrival order.
        self.queue = ConversationQueue()
        #: The turns running here, by id.
        self._live: dict[str, RunningTurn] = {}
        self.admission = TurnAdmission(max_running=settings.max_running_turns,
                                       max_starting=settings.max_starting_turns,
                                       retry_seconds=settings.saturated_retry_seconds)

    @property
    def running(self) -> int:
        """Turns this instance is starting or running now."""
        return self.admission.running

    def check_capacity(self) -> None:
        """Raise UNAVAILABLE (``TURNS_SATURATED``, with a retry delay) if a new turn would pass this
        instance's limits (see :mod:`daveloper.agent.admission`)."""
        self.admission.check()

    async def start(self, session_id: str, conversation_id: str, text: str, client_message_id: str,
                    options: ChatOptions) -> tuple[Turn, int, bool]:
        """Begin a turn; returns (turn, a seq no later than its start event's, whether it already existed).

        The turn runs after the conversation's turns admitted before it here (:mod:`daveloper.agent.queue`);
        its events all have seqs from the one returned on.

        Refused at once (UNAVAILABLE, reason ``TURNS_SATURATED``, with a retry delay) when this
        instance already runs ``max_running_turns`` or is starting ``max_starting_turns``: a turn admitted
        past that would only wait for the loop, its first token arriving long after a retry elsewhere would
        have answered.
        """
        # Shielded: a client that leaves while its turn starts (a cancel 0-80 ms after the send) must not
        # stop the start half-way, leaving a turn recorded but never run, or its claims held.
        return await self._jobs.shielded(self._admit_counted(session_id, conversation_id, text, client_message_id,
                                                             options), name=f"start of a turn in {conversation_id}")

    async def _admit_counted(self, session_id: str, conversation_id: str, text: str, client_message_id: str,
                             options: ChatOptions) -> tuple[Turn, int, bool]:
        self.admission.admit()
        try:
            turn, seq, existed = await self._admit(session_id, conversation_id, text, client_message_id, options)
        except BaseException:
            self.admission.withdraw()
            raise
        if existed:
            self.admission.withdraw()
        return turn, seq, existed

    async def _admit(self, session_id: str, conversation_id: str, text: str, client_message_id: str,
                     options: ChatOptions) -> tuple[Turn, int, bool]:
        # Three round trips: (1) the conversation, the client message id and the session's turn lease,
        # pipelined; (2) the turn, the conversation and the work lease in one transaction; (3) the start event.
        turn = Turn(id="turn_" + secrets.token_hex(10), client_message_id=client_message_id, user_text=text,
                    state=TurnState.RUNNING, create_time=now())
        limit = self._limit("quota_concurrent_turns", self._settings.max_concurrent_turns)
        leased = self.leases is not None and limit > 0
        async with self._conversations.pipeline(transaction=False) as pipe:
            self._conversations.find_in(pipe, session_id, conversation_id)
            if client_message_id:
                self._conversations.claim_client_id_in(pipe, session_id, conversation_id, client_message_id, turn.id)
            if self.leases is not None and leased:
                self.leases.acquire_in(pipe, session_id, turn.id, limit)
            replies = await redis_call(pipe.execute())
        claimed = bool(replies[1]) if client_message_id else True
        acquired = bool(replies[-1]) if leased else True
        if not claimed:  # a retry of a message already sent: that turn, whatever the limits say now
            if leased and acquired:
                await self._release(session_id, turn.id)
            return await self._conversations.claimed_turn(session_id, conversation_id, client_message_id), 0, True
        if not acquired:
            if client_message_id:
                await self._conversations.forget_client_id(session_id, conversation_id, client_message_id)
            raise ResourceExhausted(f"this session already runs {limit} turns; wait for one to finish",
                                    reason="CONCURRENT_TURNS", retry_after=1.0, metadata={"limit": str(limit)})
        conversation = parse_conversation(replies[0]) or Conversation(
            id=conversation_id, title=text[:80], create_time=turn.create_time)
        conversation.turn_count += 1
        conversation.update_time = turn.create_time
        state = RunningTurn(session_id, conversation_id, turn, options, fresh=conversation.turn_count == 1,
                            starting=True, counted=True)
        try:
            # On a cluster the records (the session's slot) and the work claim ({work}) cannot share a
            # transaction: one pipelined round trip there; if it fails, _abandon releases the claim.
            async with self._conversations.pipeline(transaction=not self._conversations.clustered) as pipe:
                self._conversations.add_turn_in(pipe, session_id, conversation, turn)
                if self._work is not None:
                    # Claimed before the start event: an orphan handler reads the log from its start.
                    self._work.claim_in(pipe, "turn", turn.id, session=session_id, conversation=conversation_id)
                await redis_call(pipe.execute())
            state.place = place = self.queue.join(state.scope)
            if place.ahead is None:
                await self._announce(state)
            else:
                self.admission.started(state)  # waiting costs no CPU: it does not hold a starting slot
        except BaseException:
            await asyncio.shield(self._abandon(state))
            raise
        self._live[turn.id] = state
        self._jobs.spawn(self._run(state), name=f"turn {turn.id}")
        return turn, place.after_seq + 1, False

    async def _announce(self, turn: RunningTurn) -> None:
        """Put the turn's start event on the log (once); from its seq on are the turn's events."""
        if turn.announced:
            return
        seq = await self._emit(turn, turn_started=TurnStarted(
            client_message_id=turn.record.client_message_id, user_text=turn.record.user_text,
            model=turn.options.model or self._settings.model, owner=self._settings.owner))
        turn.announced = True
        if turn.place is not None:
            turn.place.after_seq = seq - 1

    async def _abandon(self, turn: RunningTurn) -> None:
        """Undo the claims of a turn whose start failed."""
        if turn.place is not None:
            self.queue.leave(turn.place)
        await self._release(turn.session_id, turn.record.id)
        if self._work is not None:
            await self._work.release("turn", turn.record.id)

    def _limit(self, name: str, default: int) -> int:
        return self._limits(name) if self._limits is not None else default

    async def _release(self, session_id: str, turn_id: str) -> None:
        if self.leases is not None:
            await self.leases.release(session_id, turn_id)

    async def cancel(self, turn_id: str) -> bool:
        return await self._events.request_cancel(turn_scope(turn_id))

    async def _emit(self, turn: RunningTurn, **kind: object) -> int:
        """Append one event (after the text a model round left unsent, in the same round trip); its seq.

        Retried while Redis restarts (:mod:`daveloper.agent.retry`); the batch number makes a retry whose
        first try was stored return that seq instead of storing the events twice.
        """
        created = now()
        payloads = [bytes(ChatEvent(conversation_id=turn.conversation_id, turn_id=turn.record.id,
                                    create_time=created, **kind))]
        if turn.unsent:
            text, turn.unsent = turn.unsent, ""
            payloads.insert(0, bytes(ChatEvent(conversation_id=turn.conversation_id, turn_id=turn.record.id,
                                               create_time=created, token_delta=TokenDelta(text=text))))
        turn.appends += 1
        writer = (turn.writer or turn.record.id, turn.appends)
        first = await retry_unavailable(lambda: self._events.append_many(turn.scope, payloads, writer=writer),
                                        seconds=self._settings.redis_retry_seconds, what="turn event")
        return first + len(payloads) - 1

    async def _run(self, turn: RunningTurn) -> None:
        try:
            with span("chat.turn", **{"daveloper.turn_id": turn.record.id}):
                await self._run_turn(turn)
        finally:
            self._live.pop(turn.record.id, None)
            self.admission.ended(turn)
            if turn.place is not None:  # after the record is written: the next turn reads it as history
                self.queue.leave(turn.place)

    async def _run_turn(self, turn: RunningTurn) -> None:
        finish = FinishReason.STOP
        failure: BaseException | None = None
        try:
            # Cancelling the rounds closes the model stream, and with it the upstream request.
            finish = await self._events.run_cancellable(turn_scope(turn.record.id), self._queued_rounds(turn))
        except Cancelled:
            finish = FinishReason.CANCELLED
        except asyncio.CancelledError:
            await asyncio.shield(self._finish(turn, FinishReason.INTERRUPTED, None))
            raise
        except Exception as exc:
            failure = exc
        finally:
            await asyncio.shield(self._release(turn.session_id, turn.record.id))
        await self._finish(turn, finish, failure)

    async def fail_orphan(self, fields: Mapping[str, str]) -> None:
        """Fail a turn whose instance stopped (its lease lapsed), keeping the text it had streamed."""
        session_id, conversation_id, turn_id = fields["session"], fields["conversation"], fields["id"]
        if turn_id in self._live and self._work is not None:
            # Still running here: its lease lapsed while Redis was away (renewals failed). Lease it again.
            await self._work.claim("turn", turn_id, session=session_id, conversation=conversation_id)
            return
        try:
            record = await self._conversations.turn(session_id, conversation_id, turn_id)
        except NotFound:
            return  # the session was deleted meanwhile
        await self._release(session_id, turn_id)
        if record.state is not TurnState.RUNNING:
            return
        scope = conversation_scope(session_id, conversation_id)
        text: list[str] = []
        async for entry in self._events.read(scope, max(0, int(fields.get("seq", "1")) - 1), follow=False):
            event = ChatEvent.parse(entry.payload)
            if event.turn_id == turn_id and event.token_delta is not None:
                text.append(event.token_delta.text)
        # Its own writer id: the lost owner's batch numbers must not make these appends look like retries.
        state = RunningTurn(session_id, conversation_id, record, ChatOptions(), text=text,
                            writer=f"{turn_id}:reaped:{secrets.token_hex(4)}")
        lost = Unavailable("the server running this turn stopped; send the message again",
                           reason="OWNER_LOST", retry_after=0, metadata={"owner": fields.get("owner", "")})
        await self._finish(state, FinishReason.UNSPECIFIED, lost)
        log.warning("turn of a lost instance failed", extra={"turn_id": turn_id, "owner": fields.get("owner")})

    async def _finish(self, turn: RunningTurn, finish: FinishReason, failure: BaseException | None) -> None:
        # Freed before the final event: a client that sees the end may start its next turn at once.
        self.admission.ended(turn)
        recorded = False

        async def record() -> None:
            # The record and the work lease's release in one round trip, after the final event.
            async with self._conversations.pipeline(transaction=False) as pipe:
                self._conversations.put_turn_in(pipe, turn.session_id, turn.conversation_id, turn.record)
                if self._work is not None:
                    self._work.release_in(pipe, "turn", turn.record.id)
                await redis_call(pipe.execute())

        try:
            await self._record_finish(turn, finish, failure)
            await retry_unavailable(record, seconds=self._settings.redis_retry_seconds, what="turn record")
            recorded = True
        finally:
            if not recorded and self._work is not None:
                # Its end is not written: the lease stays, no longer renewed, and once it lapses
                # the reaper (here or on another instance) fails the turn (OWNER_LOST).
                self._work.disown("turn", turn.record.id)

    async def _record_finish(self, turn: RunningTurn, finish: FinishReason, failure: BaseException | None) -> None:
        observe_end(self._metrics, turn, finish, failure)
        if turn.record.state is TurnState.RUNNING and turn.place is not None:
            await self._announce(turn)  # cancelled or failed while it waited: it still starts before it ends
        text = "".join(turn.text)
        record = turn.record
        for citation in cited_passages(text, turn.passages, turn.earlier_citations):
            record.citations.append(citation)
            await self._emit(turn, citation=citation)
        record.assistant_text, record.complete_time = text, now()
        record.usage = Usage(prompt_tokens=turn.prompt_tokens, completion_tokens=turn.completion_tokens,
                             total_tokens=turn.prompt_tokens + turn.completion_tokens)
        if failure is not None:
            if not isinstance(failure, DaveloperError):
                log.error("turn failed", exc_info=failure, extra={"turn_id": record.id})
            record.state, record.failure = TurnState.FAILED, to_failure(failure)
            await self._emit(turn, turn_failed=TurnFailed(failure=record.failure, partial_text=text))
        else:
            record.state, record.finish_reason = TurnState.COMPLETED, finish
            elapsed = time.perf_counter() - turn.started
            ttft = (turn.first_token or time.perf_counter()) - turn.started
            await self._emit(turn, turn_completed=TurnCompleted(
                finish_reason=finish, usage=record.usage, text=text,
                time_to_first_token=datetime.timedelta(seconds=ttft), duration=datetime.timedelta(seconds=elapsed)))

    async def _history(self, turn: RunningTurn) -> list[Message]:
        past_turns = [] if turn.fresh else await self._conversations.turns(turn.session_id, turn.conversation_id,
                                                                           last=50)
        earlier = carried_history([p for p in past_turns if p.id != turn.record.id], self._settings.history_tokens)
        # Citation numbers go on from the carried passages', so a follow-up's [n] names one passage.
        turn.citations = last_passage_number(past_turns)
        turn.earlier_citations = {c.index: c for p in past_turns for c in p.citations}
        return [Message("system", self._settings.system_prompt), *earlier, Message("user", turn.record.user_text)]

    async def _queued_rounds(self, turn: RunningTurn) -> FinishReason:
        """The turn's rounds, once the turns ahead of it in its conversation have ended."""
        if turn.place is not None and turn.place.ahead is not None:
            await self.queue.wait(turn.place)
            await self._announce(turn)
        return await self._rounds(turn)

    async def _rounds(self, turn: RunningTurn) -> FinishReason:
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
                self.admission.started(turn)
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
