"""Chat turns from start to end: admission, records and leases, the conversation's queue, the final event.

What a turn does in between (history, model rounds, tool calls) is :mod:`daveloper.agent.rounds`.

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
import datetime
import logging
import secrets
import time
from collections.abc import Callable, Mapping

from daveloper.agent.admission import TurnAdmission
from daveloper.agent.conversations import Conversations, now, parse_conversation
from daveloper.agent.feed import TurnFeed
from daveloper.agent.history import cited_passages
from daveloper.agent.model import ChatModel
from daveloper.agent.queue import ConversationQueue
from daveloper.agent.retry import retry_unavailable
from daveloper.agent.rounds import TurnRounds
from daveloper.agent.running import RunningTurn, conversation_scope, observe_end, turn_scope
from daveloper.agent.settings import DEFAULT_SYSTEM_PROMPT, AgentSettings
from daveloper.agent.slots import TurnSlots
from daveloper.agent.tokenwire import TokenEvents
from daveloper.agent.tools import Toolbox
from daveloper.errors import (
    Cancelled,
    DaveloperError,
    NotFound,
    ResourceExhausted,
    Unavailable,
    to_failure,
    translated,
)
from daveloper.eventlog import EventLog
from daveloper.infra.redis import redis_call
from daveloper.jobs import BackgroundJobs
from daveloper.leases import LeaseSet
from daveloper.metrics import Metrics
from daveloper.ownership import WorkLeases
from daveloper.rpc import upb
from daveloper.tracing import span
from generated.daveloper.v1 import (
    ChatEvent,
    ChatOptions,
    Conversation,
    FinishReason,
    TokenDelta,
    Turn,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    TurnState,
    Usage,
)

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Agent", "AgentSettings", "conversation_scope", "turn_scope"]

log = logging.getLogger("daveloper.agent")

class Agent:
    """Starts turns and runs them to completion in the background."""

    def __init__(self, *, events: EventLog, conversations: Conversations, model: ChatModel, tools: Toolbox,
                 jobs: BackgroundJobs, settings: AgentSettings, leases: LeaseSet | None = None,
                 work: WorkLeases | None = None, limits: Callable[[str], int] | None = None,
                 metrics: Metrics | None = None) -> None:
        self._events = events
        self._metrics = metrics = metrics if metrics is not None else Metrics()
        self._first_event = metrics.llm_first_event.labels(settings.provider)
        #: Limits changed at run time (``max_tool_rounds``, ``quota_concurrent_turns``), else the settings'.
        self._limits = limits
        #: Leases on running turns, so another instance fails them if this one dies.
        self._work = work
        #: Running turns per session, for ``max_concurrent_turns``.
        self._slots = TurnSlots(leases, events.batch, clustered=conversations.clustered,
                                retry_seconds=settings.redis_retry_seconds)
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
        #: Token deltas, most of a turn's events, encoded with upb (:mod:`daveloper.agent.tokenwire`).
        self._tokens = TokenEvents()
        self._rounds = TurnRounds(conversations=conversations, model=model, tools=tools, settings=settings,
                                  metrics=metrics, emit=self._emit, model_called=self.admission.started,
                                  limit=self._limit)

    @property
    def running(self) -> int:
        """Turns this instance is starting or running now."""
        return self.admission.running

    def check_capacity(self) -> None:
        """Raise UNAVAILABLE (``TURNS_SATURATED``, with a retry delay) if a new turn would pass this
        instance's limits (see :mod:`daveloper.agent.admission`)."""
        self.admission.check()

    async def start(self, session_id: str, conversation_id: str, text: str, client_message_id: str,
                    options: ChatOptions) -> tuple[Turn, int, bool, TurnFeed | None]:
        """Begin a turn; returns (turn, a seq no later than its start event's, whether it already existed,
        its events as they are appended here: :mod:`daveloper.agent.feed`, None for a turn that already existed).

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
                             options: ChatOptions) -> tuple[Turn, int, bool, TurnFeed | None]:
        self.admission.admit()
        try:
            started = await self._admit(session_id, conversation_id, text, client_message_id, options)
        except BaseException:
            self.admission.withdraw()
            raise
        if started[2]:  # it already existed
            self.admission.withdraw()
        return started

    async def _admit(self, session_id: str, conversation_id: str, text: str, client_message_id: str,
                     options: ChatOptions) -> tuple[Turn, int, bool, TurnFeed | None]:
        # Three round trips: (1) the conversation, the client message id and the session's turn lease, sent
        # with whatever else is queued (other turns' appends); (2) the turn, the conversation and the work lease
        # in one transaction; (3) the start event.
        turn = Turn(id="turn_" + secrets.token_hex(10), client_message_id=client_message_id, user_text=text,
                    state=TurnState.RUNNING, create_time=now())
        limit = self._limit("quota_concurrent_turns", self._settings.max_concurrent_turns)
        acquire = self._slots.acquire_command(session_id, turn.id, limit)
        commands = [self._conversations.find_command(session_id, conversation_id)]
        if client_message_id:
            commands.append(self._conversations.claim_client_id_command(session_id, conversation_id,
                                                                        client_message_id, turn.id))
        if acquire is not None:
            commands.append(acquire)
        replies = await redis_call(self._events.batch.execute(commands))
        claimed = bool(replies[1]) if client_message_id else True
        acquired = bool(replies[-1]) if acquire is not None else True
        if not claimed:  # a retry of a message already sent: that turn, whatever the limits say now
            if acquire is not None and acquired:
                await self._slots.release(session_id, turn.id)
            return await self._conversations.claimed_turn(session_id, conversation_id, client_message_id), 0, True, None
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
                            starting=True, counted=True, feed=TurnFeed())
        try:
            # All or nothing, sent with whatever else is queued. On a cluster the records (the session's slot)
            # and the work claim ({work}) live apart: not atomic there; if it fails, _abandon releases the claim.
            writes = self._conversations.add_turn_commands(session_id, conversation, turn)
            if self._work is not None:
                # Claimed before the start event: an orphan handler reads the log from its start.
                writes += self._work.claim_commands("turn", turn.id, session=session_id, conversation=conversation_id)
            await redis_call(self._events.batch.atomic(writes))
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
        return turn, place.after_seq + 1, False, state.feed

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
        if turn.feed is not None:
            turn.feed.close()
        if turn.place is not None:
            self.queue.leave(turn.place)
        await self._slots.release(turn.session_id, turn.record.id)
        if self._work is not None:
            try:
                await self._work.release("turn", turn.record.id)
            except Unavailable:
                # Left to lapse: if the turn's record was written, the reaper fails it (OWNER_LOST).
                self._work.disown("turn", turn.record.id)

    def _limit(self, name: str, default: int) -> int:
        return self._limits(name) if self._limits is not None else default

    async def cancel(self, turn_id: str) -> bool:
        return await self._events.request_cancel(turn_scope(turn_id))

    async def _emit(self, turn: RunningTurn, **kind: object) -> int:
        """Append one event (after the text a model round left unsent, in the same round trip); its seq.

        Retried while Redis restarts (:mod:`daveloper.agent.retry`); the batch number makes a retry whose
        first try was stored return that seq instead of storing the events twice.
        """
        created = now()
        delta = kind.get("token_delta")
        payloads = [
            self._tokens.encode(turn.conversation_id, turn.record.id, created, delta.text)
            if isinstance(delta, TokenDelta) and len(kind) == 1 else
            upb.encode(ChatEvent(conversation_id=turn.conversation_id, turn_id=turn.record.id, create_time=created,
                                 **kind))
        ]
        if turn.unsent:
            text, turn.unsent = turn.unsent, ""
            payloads.insert(0, self._tokens.encode(turn.conversation_id, turn.record.id, created, text))
        turn.appends += 1
        writer = (turn.writer or turn.record.id, turn.appends)

        async def append() -> int:
            try:
                return await self._events.append_many(turn.scope, payloads, writer=writer)
            except Unavailable:
                # Redis is down: the stream stops waiting on this instance and reads the log, which fails
                # UNAVAILABLE at once (the client resumes later); the turn itself retries. A cluster's
                # failover is ridden out by the stream as by the turn.
                if turn.feed is not None and await self._events.down():
                    turn.feed.close()
                raise

        first = await retry_unavailable(append, seconds=self._settings.redis_retry_seconds, what="turn event")
        if turn.feed is not None:
            turn.feed.push(first, payloads, ends_turn="turn_completed" in kind or "turn_failed" in kind)
        return first + len(payloads) - 1

    async def _run(self, turn: RunningTurn) -> None:
        try:
            with span("chat.turn", **{"daveloper.turn_id": turn.record.id}):
                await self._run_turn(turn)
        finally:
            if turn.feed is not None:  # its stream reads the log for whatever was not appended here
                turn.feed.close()
            self._live.pop(turn.record.id, None)
            self.admission.ended(turn)
            if turn.place is not None:  # after the record is written: the next turn reads it as history
                self.queue.leave(turn.place)

    async def _run_turn(self, turn: RunningTurn) -> None:
        finish = FinishReason.STOP
        failure: BaseException | None = None
        try:
            # Cancelling the rounds closes the model stream, and with it the upstream request.
            # Retried while Redis cannot set up the cancel watch (a restart), never once the rounds began.
            finish = await retry_unavailable(
                lambda: self._events.run_cancellable(turn_scope(turn.record.id), self._queued_rounds(turn)),
                seconds=self._settings.redis_retry_seconds, what="turn start",
                retry_if=lambda: not turn.began)
        except Cancelled:
            finish = FinishReason.CANCELLED
        except asyncio.CancelledError:
            try:
                await asyncio.shield(self._finish(turn, FinishReason.INTERRUPTED, None))
            finally:
                await asyncio.shield(self._slots.release(turn.session_id, turn.record.id))
            raise
        except Exception as exc:
            failure = translated(exc)  # e.g. Redis unreachable: UNAVAILABLE, not a fault of ours
        # The session's slot is free before its client can see the end (daveloper.agent.slots).
        released = await self._slots.release_ahead(turn.session_id, turn.record.id)
        try:
            await self._finish(turn, finish, failure)
        finally:
            if released is not None:
                await asyncio.shield(self._slots.settle(turn.session_id, turn.record.id, released))

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
        await self._slots.release(session_id, turn_id)
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
            # The record and the work lease's release after the final event, queued with the appends
            # of other turns (one pipeline for them all when many turns end together).
            commands = [self._conversations.put_turn_command(turn.session_id, turn.conversation_id, turn.record)]
            if self._work is not None:
                commands += self._work.release_commands("turn", turn.record.id)
            await redis_call(self._events.batch.execute(commands))

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
                             total_tokens=turn.prompt_tokens + turn.completion_tokens, redactions=turn.redactions)
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

    async def _queued_rounds(self, turn: RunningTurn) -> FinishReason:
        """The turn's rounds, once the turns ahead of it in its conversation have ended."""
        turn.began = True
        if turn.place is not None and turn.place.ahead is not None:
            await self.queue.wait(turn.place)
            await self._announce(turn)
        if self._work is None:
            return await self._rounds.run(turn)
        # A model or tool that stalls with the instance alive: stopped after stall_seconds with no event.
        async with self._work.watch("turn", turn.record.id, lambda: turn.appends):
            return await self._rounds.run(turn)
