"""Conversations and their turns, in Redis, each under the session that owns it.

Records are the contract's own messages (``Conversation``, ``Turn``), stored as
protobuf bytes. Every key carries the session id, so a conversation id of
another session simply does not exist here (NOT_FOUND, never "forbidden").

Keys (``dv:`` prefix)::

    dv:conv:<session>:<conversation>        Conversation message
    dv:convs:<session>                      sorted set of conversation ids by last update
    dv:turn:<session>:<conversation>:<turn> Turn message
    dv:turns:<session>:<conversation>       list of turn ids, oldest first
    dv:turnclient:<session>:<conversation>  hash client_message_id -> turn id
"""

from __future__ import annotations

import asyncio
import datetime
import re
from typing import Any

import redis.asyncio as aioredis

from daveloper.errors import InvalidArgument, NotFound, Unavailable
from daveloper.infra.redis import is_cluster, reply_text
from daveloper.keys import Keys
from daveloper.paging import next_page_token, page_offset
from daveloper.rpc import upb
from generated.daveloper.v1 import Conversation, Turn

__all__ = ["Conversations", "parse_conversation", "validate_conversation_id"]

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def validate_conversation_id(conversation_id: str, field: str = "conversation_id") -> None:
    if not _ID.match(conversation_id):
        raise InvalidArgument.field(field, "1-64 characters of letters, digits and _ . : -")


class Conversations:
    """The conversation and turn records of every session."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "dv:") -> None:
        self._redis = redis
        # Every name carries the session's hash tag: a transaction over a session's records stays in one slot.
        self._keys = Keys(prefix)
        #: On a Redis Cluster: a transaction may hold only one session's records (one hash slot).
        self.clustered = is_cluster(redis)

    def _conv(self, session: str, conv: str) -> str:
        return self._keys.conversation(session, conv)

    def _convs(self, session: str) -> str:
        return self._keys.conversations(session)

    def _turn(self, session: str, conv: str, turn: str) -> str:
        return self._keys.turn(session, conv, turn)

    def _turns(self, session: str, conv: str) -> str:
        return self._keys.turns(session, conv)

    def _clients(self, session: str, conv: str) -> str:
        return self._keys.turn_clients(session, conv)

    async def find(self, session_id: str, conversation_id: str) -> Conversation | None:
        raw = await self._redis.get(self._conv(session_id, conversation_id))
        return None if raw is None else Conversation.parse(raw)

    async def get(self, session_id: str, conversation_id: str) -> Conversation:
        found = await self.find(session_id, conversation_id) if conversation_id else None
        if found is None:
            raise NotFound(f"conversation {conversation_id!r} not found", reason="CONVERSATION_NOT_FOUND")
        return found

    async def save(self, session_id: str, conversation: Conversation) -> None:
        assert conversation.update_time is not None
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._conv(session_id, conversation.id), upb.encode(conversation))
            pipe.zadd(self._convs(session_id), {conversation.id: conversation.update_time.timestamp()})
            await pipe.execute()

    async def page(self, session_id: str, *, page_size: int, page_token: str) -> tuple[list[Conversation], str]:
        offset = page_offset(page_token)
        ids = await self._redis.zrevrange(self._convs(session_id), offset, offset + page_size)
        more = len(ids) > page_size
        raws = await self._redis.mget([self._conv(session_id, reply_text(i)) for i in ids[:page_size]]) if ids else []
        return [Conversation.parse(r) for r in raws if r is not None], next_page_token(offset + page_size, more=more)

    async def add_turn(self, session_id: str, conversation_id: str, turn: Turn) -> Turn | None:
        """Record a new turn; if its client message id was seen, return that earlier turn instead."""
        if turn.client_message_id:
            claimed = await self._redis.hsetnx(self._clients(session_id, conversation_id),
                                               turn.client_message_id, turn.id)
            if not claimed:
                earlier = await self._redis.hget(self._clients(session_id, conversation_id), turn.client_message_id)
                return await self.turn(session_id, conversation_id, reply_text(earlier))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._turn(session_id, conversation_id, turn.id), upb.encode(turn))
            pipe.rpush(self._turns(session_id, conversation_id), turn.id)
            await pipe.execute()
        return None

    # -- a turn's start in two round trips: reads and claims, then its writes together (see Agent.start) --

    def find_command(self, session_id: str, conversation_id: str) -> tuple[Any, ...]:
        """:meth:`find` as a command; its reply is the record's bytes or None (:func:`parse_conversation`)."""
        return "GET", self._conv(session_id, conversation_id)

    def claim_client_id_command(self, session_id: str, conversation_id: str, client_message_id: str,
                                turn_id: str) -> tuple[Any, ...]:
        """The claim of a client message id for ``turn_id`` as a command; its reply is false if it was seen before."""
        return "HSETNX", self._clients(session_id, conversation_id), client_message_id, turn_id

    async def forget_client_id(self, session_id: str, conversation_id: str, client_message_id: str) -> None:
        """Drop a claim made by :meth:`claim_client_id_command` for a turn that was not started after all."""
        await self._redis.hdel(self._clients(session_id, conversation_id), client_message_id)

    async def claimed_turn(self, session_id: str, conversation_id: str, client_message_id: str, *,
                           wait: float = 2.0) -> Turn:
        """The turn that claimed ``client_message_id`` first.

        A resend may arrive while that turn's start is still writing its record (the claim
        comes first): its record is waited for, up to ``wait`` seconds. A claim that was
        dropped meanwhile (that start failed) answers UNAVAILABLE: send the message again.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            earlier = await self._redis.hget(self._clients(session_id, conversation_id), client_message_id)
            if earlier is None:
                raise Unavailable("this message's earlier send did not start a turn; send it again",
                                  reason="TURN_NOT_STARTED", retry_after=0.1)
            try:
                return await self.turn(session_id, conversation_id, reply_text(earlier))
            except NotFound:
                if loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.02)

    def add_turn_commands(self, session_id: str, conversation: Conversation, turn: Turn) -> list[tuple[Any, ...]]:
        """The writes of a new turn and its conversation's updated record, each ``(name, key, *args)``
        (for :meth:`CommandBatcher.atomic <daveloper.infra.batching.CommandBatcher.atomic>`)."""
        assert conversation.update_time is not None
        return [("SET", self._turn(session_id, conversation.id, turn.id), upb.encode(turn)),
                ("RPUSH", self._turns(session_id, conversation.id), turn.id),
                ("SET", self._conv(session_id, conversation.id), upb.encode(conversation)),
                ("ZADD", self._convs(session_id), conversation.update_time.timestamp(), conversation.id)]

    def put_turn_command(self, session_id: str, conversation_id: str, turn: Turn) -> tuple[Any, ...]:
        """:meth:`put_turn` as a command, to send with others (:meth:`CommandBatcher.execute
        <daveloper.infra.batching.CommandBatcher.execute>`)."""
        return "SET", self._turn(session_id, conversation_id, turn.id), upb.encode(turn)

    async def put_turn(self, session_id: str, conversation_id: str, turn: Turn) -> None:
        await self._redis.set(self._turn(session_id, conversation_id, turn.id), upb.encode(turn))

    async def turn(self, session_id: str, conversation_id: str, turn_id: str) -> Turn:
        raw = await self._redis.get(self._turn(session_id, conversation_id, turn_id)) if turn_id else None
        if raw is None:
            raise NotFound(f"turn {turn_id!r} not found", reason="TURN_NOT_FOUND")
        return Turn.parse(raw)

    async def turns(self, session_id: str, conversation_id: str, *, last: int = 0) -> list[Turn]:
        """The conversation's turns, oldest first (only the ``last`` ones if given)."""
        ids = await self._redis.lrange(self._turns(session_id, conversation_id), -last if last else 0, -1)
        keys = [self._turn(session_id, conversation_id, reply_text(i)) for i in ids]
        raws = await self._redis.mget(keys) if keys else []
        return [Turn.parse(r) for r in raws if r is not None]

    async def delete(self, session_id: str, conversation_id: str) -> None:
        ids = await self._redis.lrange(self._turns(session_id, conversation_id), 0, -1)
        keys = [self._turn(session_id, conversation_id, reply_text(i)) for i in ids]
        keys += [self._conv(session_id, conversation_id), self._turns(session_id, conversation_id),
                 self._clients(session_id, conversation_id)]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys)
            pipe.zrem(self._convs(session_id), conversation_id)
            await pipe.execute()

    async def conversation_ids(self, session_id: str) -> list[str]:
        return [reply_text(i) for i in await self._redis.zrange(self._convs(session_id), 0, -1)]


def parse_conversation(raw: bytes | None) -> Conversation | None:
    """A conversation record's bytes as returned by :meth:`Conversations.find_in`'s command."""
    return None if raw is None else Conversation.parse(raw)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
