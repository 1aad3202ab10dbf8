"""``daveloper.v1.AgentService``: streaming chat turns, resumable watch, cancel, history."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

from daveloper.agent.admission import held_reservation
from daveloper.agent.conversations import Conversations, validate_conversation_id
from daveloper.agent.feed import TurnFeed
from daveloper.agent.turns import Agent, conversation_scope
from daveloper.errors import InvalidArgument
from daveloper.eventlog import Entry, EventLog
from daveloper.rpc import Authenticator, Call, Servicer
from daveloper.rpc.encoded import Encoded, length_delimited_fields, wrap_event
from daveloper.servicers.heartbeat import Heartbeats, heartbeat
from generated.daveloper.v1 import (
    AgentServiceBase,
    CancelTurnRequest,
    CancelTurnResponse,
    ChatOptions,
    ChatRequest,
    ChatResponse,
    DeleteConversationRequest,
    DeleteConversationResponse,
    GetConversationRequest,
    GetConversationResponse,
    ListConversationsRequest,
    ListConversationsResponse,
    SendMessage,
    TurnState,
    WatchRequest,
    WatchResponse,
)

__all__ = ["AgentService", "purge_conversations"]

MAX_TEXT_CHARS = 32_000
MAX_CLIENT_ID_CHARS = 128
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

_CHAT = "/daveloper.v1.AgentService/Chat"
# ChatEvent field numbers (agent.proto) that the Chat stream reads off stored events.
_TURN_ID, _TURN_COMPLETED, _TURN_FAILED = 3, 15, 16


def _validate_send(send: SendMessage) -> None:
    problems = []
    if not send.text.strip():
        problems.append(("send.text", "must not be empty"))
    elif len(send.text) > MAX_TEXT_CHARS:
        problems.append(("send.text", f"at most {MAX_TEXT_CHARS} characters"))
    if len(send.client_message_id) > MAX_CLIENT_ID_CHARS:
        problems.append(("send.client_message_id", f"at most {MAX_CLIENT_ID_CHARS} characters"))
    if send.options is not None and len(send.options.tools) > 16:
        problems.append(("send.options.tools", "at most 16 tools"))
    if problems:
        raise InvalidArgument("invalid message", violations=problems)
    if send.conversation_id:
        validate_conversation_id(send.conversation_id, "send.conversation_id")


async def purge_conversations(conversations: Conversations, events: EventLog, session_id: str) -> None:
    """Delete every conversation of a session, with its event log."""
    for conversation_id in await conversations.conversation_ids(session_id):
        await conversations.delete(session_id, conversation_id)
        await events.delete(conversation_scope(session_id, conversation_id))


class AgentService(Servicer):
    base = AgentServiceBase

    def __init__(self, *, auth: Authenticator, agent: Agent, conversations: Conversations, events: EventLog,
                 heartbeat_seconds: float = 15.0) -> None:
        super().__init__(auth=auth)
        self._agent = agent
        self._conversations = conversations
        self._events = events
        self._heartbeat_seconds = heartbeat_seconds

    def precheck(self, method: str) -> AbstractContextManager[object]:
        if method == _CHAT:
            # A new Chat stream holds a starting slot until its first message is read, so that in a burst the
            # streams past the limit are refused before their authentication and first message take loop time
            # from the turns already admitted (see daveloper.agent.admission); later messages are checked in _chat.
            return self._agent.admission.reservation()
        return super().precheck(method)

    async def Chat(self, call: Call[ChatRequest, ChatResponse | Encoded]) -> None:
        delivered = 0  # the last seq sent, for heartbeats
        async with Heartbeats(call, self._heartbeat_seconds,
                              lambda: ChatResponse(heartbeat=heartbeat(delivered))) as out:
            # one writer at a time: several turns stream on this call, and heartbeats between them

            async def send(entry: Entry) -> None:
                nonlocal delivered
                await out.send(wrap_event(entry.payload, entry.seq))
                delivered = entry.seq

            await self._chat(call, send)

    async def _chat(self, call: Call[ChatRequest, ChatResponse | Encoded],
                    send: Callable[[Entry], Awaitable[None]]) -> None:
        forwarders: set[asyncio.Task[None]] = set()
        # The latest forwarder of each conversation: the next one sends after it, so seqs only increase.
        latest: dict[str, asyncio.Task[None]] = {}

        handler = asyncio.current_task()
        failed: list[BaseException] = []

        def settled(task: asyncio.Task[None]) -> None:
            # A long-lived stream carries many turns: forget finished forwarders.
            if task.cancelled() or (error := task.exception()) is None:
                forwarders.discard(task)
            elif not failed and handler is not None:
                # A failed read (Redis went away) ends the call at once with its status, even while
                # the handler waits for the client's next message.
                failed.append(error)
                handler.cancel()

        def forget_latest(conversation_id: str, task: asyncio.Task[None]) -> None:
            if latest.get(conversation_id) is task:
                del latest[conversation_id]

        async def forward(conversation_id: str, turn_id: str, after_seq: int,
                          ahead: asyncio.Task[None] | None, feed: TurnFeed | None) -> None:
            try:
                if ahead is not None:  # the conversation's earlier turn on this stream goes out first
                    await asyncio.wait([ahead])
                # A turn started here: its events as this instance appends them, no read of the log.
                while feed is not None and (item := await feed.next()) is not None:
                    entry, ends_turn = item
                    await send(entry)
                    after_seq = entry.seq
                    if ends_turn:
                        return
            finally:
                if feed is not None:
                    feed.close()
            # Stored events go out as stored: the turn id and kind are read off the wire format.
            wanted = turn_id.encode()
            scope = conversation_scope(call.session_id, conversation_id)
            async with contextlib.aclosing(self._events.read(scope, after_seq)) as entries:
                async for entry in entries:
                    fields = length_delimited_fields(entry.payload)
                    if fields.get(_TURN_ID) != wanted:
                        continue
                    await send(entry)
                    if _TURN_COMPLETED in fields or _TURN_FAILED in fields:
                        return

        try:
            async for request in call:
                if (reservation := held_reservation.get()) is not None:
                    reservation.release()  # its first message is here: it is checked (and counted) as a turn now
                if request.send is not None:
                    _validate_send(request.send)
                    self._agent.check_capacity()  # before the charge: a refused turn costs no rate budget
                    await call.charge("chat_turns")
                    conversation_id = request.send.conversation_id or "conv_" + secrets.token_hex(10)
                    turn, seq, existed, feed = await self._agent.start(
                        call.session_id, conversation_id, request.send.text.strip(),
                        request.send.client_message_id, request.send.options or ChatOptions())
                    after = 0 if existed else seq - 1
                    ahead = latest.get(conversation_id)
                    forwarder = asyncio.create_task(forward(conversation_id, turn.id, after,
                                                            ahead if ahead is not None and not ahead.done() else None,
                                                            feed))
                    latest[conversation_id] = forwarder
                    forwarders.add(forwarder)
                    forwarder.add_done_callback(settled)
                    forwarder.add_done_callback(functools.partial(forget_latest, conversation_id))
                elif request.cancel is not None:
                    await self.CancelTurn(request.cancel, call)
                else:
                    raise InvalidArgument.field("action", "send a message or a cancel")
            # The client has half-closed: finish streaming the turns it started.
            for task in list(forwarders):
                await task
        except asyncio.CancelledError:
            if failed and handler is not None and handler.uncancel() == 0:
                raise failed[0] from None
            raise
        finally:
            for task in forwarders:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*forwarders, return_exceptions=True)

    async def Watch(self, request: WatchRequest, call: Call[Any, Any]) -> None:
        validate_conversation_id(request.conversation_id)
        # No record lookup: a conversation with no events yet is waited for (its first turn may be
        # starting elsewhere). The log is named by the caller's session, so another session's
        # conversation id is just an empty conversation of the caller's own: it waits the same way.
        scope = conversation_scope(call.session_id, request.conversation_id)
        delivered = request.after_seq
        async with Heartbeats(call, self._heartbeat_seconds,
                              lambda: WatchResponse(heartbeat=heartbeat(delivered))) as out, \
                contextlib.aclosing(self._events.read(scope, request.after_seq)) as entries:
            async for entry in entries:
                await out.send(wrap_event(entry.payload, entry.seq))  # a WatchResponse, from the stored bytes
                delivered = entry.seq

    async def CancelTurn(self, request: CancelTurnRequest, call: Call[Any, Any]) -> CancelTurnResponse:
        validate_conversation_id(request.conversation_id)
        await self._conversations.get(call.session_id, request.conversation_id)
        turn = await self._conversations.turn(call.session_id, request.conversation_id, request.turn_id)
        if turn.state is not TurnState.RUNNING:
            return CancelTurnResponse(cancelled=False)  # already finished: nothing to stop
        return CancelTurnResponse(cancelled=await self._agent.cancel(turn.id))

    async def ListConversations(
        self, request: ListConversationsRequest, call: Call[Any, Any]
    ) -> ListConversationsResponse:
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        found, token = await self._conversations.page(call.session_id, page_size=size, page_token=request.page_token)
        for conversation in found:
            conversation.last_seq = await self._events.last_seq(conversation_scope(call.session_id, conversation.id))
        return ListConversationsResponse(conversations=found, next_page_token=token)

    async def GetConversation(self, request: GetConversationRequest, call: Call[Any, Any]) -> GetConversationResponse:
        validate_conversation_id(request.conversation_id)
        conversation = await self._conversations.get(call.session_id, request.conversation_id)
        conversation.last_seq = await self._events.last_seq(conversation_scope(call.session_id, conversation.id))
        turns = await self._conversations.turns(call.session_id, conversation.id)
        return GetConversationResponse(conversation=conversation, turns=turns)

    async def DeleteConversation(
        self, request: DeleteConversationRequest, call: Call[Any, Any]
    ) -> DeleteConversationResponse:
        validate_conversation_id(request.conversation_id)
        await self._conversations.get(call.session_id, request.conversation_id)
        await self._conversations.delete(call.session_id, request.conversation_id)
        await self._events.delete(conversation_scope(call.session_id, request.conversation_id))
        return DeleteConversationResponse()
