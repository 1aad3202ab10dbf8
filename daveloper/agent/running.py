"""A running turn's state, its scopes, and the metrics counted when it ends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from daveloper.agent.feed import TurnFeed
from daveloper.agent.queue import QueuePlace
from daveloper.metrics import Metrics
from generated.daveloper.v1 import ChatOptions, Citation, FinishReason, Turn

__all__ = ["RunningTurn", "conversation_scope", "observe_end", "turn_scope"]


def conversation_scope(session_id: str, conversation_id: str) -> str:
    """The event-log scope of a conversation (every turn's events)."""
    return f"conv:{session_id}:{conversation_id}"


def turn_scope(turn_id: str) -> str:
    """The control scope of a turn (its cancel requests)."""
    return f"turn:{turn_id}"


@dataclass
class RunningTurn:
    """A turn while this instance runs it: its record, the text so far, counts and timings."""

    session_id: str
    conversation_id: str
    record: Turn
    options: ChatOptions
    text: list[str] = field(default_factory=list)
    #: The last passage number given out (numbers go on across the conversation's turns).
    citations: int = 0
    #: This turn's passages by number: a Citation event goes out for those its answer cites.
    passages: dict[int, Citation] = field(default_factory=dict)
    #: The passages earlier turns cited, which a follow-up may cite again.
    earlier_citations: dict[int, Citation] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    redactions: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    #: The conversation's first turn: no history to load.
    fresh: bool = False
    #: Text a model round left unwritten: it goes out with the next event.
    unsent: str = ""
    #: Admitted here, its model not yet called (counted against ``max_starting_turns``).
    starting: bool = False
    #: Admitted here and not ended (counted against ``max_running_turns``).
    counted: bool = False
    #: Its place in the conversation's queue (:mod:`daveloper.agent.queue`).
    place: QueuePlace | None = None
    #: Its start event is on the log.
    announced: bool = False
    #: Batches of events it has appended (each append's number makes a retried one idempotent).
    appends: int = 0
    #: The writer id its appends carry (default: the turn id).
    writer: str = ""
    #: Its work has begun (waiting for its turn, then its rounds): a failure then is not retried.
    began: bool = False
    #: Its events as appended here, for the stream that started it (:mod:`daveloper.agent.feed`).
    feed: TurnFeed | None = None

    @property
    def scope(self) -> str:
        return conversation_scope(self.session_id, self.conversation_id)


def observe_end(metrics: Metrics, turn: RunningTurn, finish: FinishReason, failure: BaseException | None) -> None:
    """Count a turn's end: its outcome, time to first token, duration and token rate."""
    if failure is None:
        outcome = finish.name.lower()
    else:
        outcome = "owner_lost" if getattr(failure, "reason", "") == "OWNER_LOST" else "failed"
    metrics.chat_turns.labels(outcome).inc()
    ended = time.perf_counter()
    metrics.chat_turn_seconds.observe(ended - turn.started)
    metrics.chat_tokens.inc(turn.completion_tokens)
    if turn.first_token is not None:
        metrics.chat_ttft.observe(turn.first_token - turn.started)
        if turn.completion_tokens and ended > turn.first_token:
            metrics.chat_tokens_per_second.observe(turn.completion_tokens / (ended - turn.first_token))
