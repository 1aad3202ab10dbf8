"""A chat model behind a circuit breaker: a model endpoint that fails or stalls is refused fast.

The breaker sees one outcome per model round: the first streamed event must
arrive within ``first_event_seconds`` (a stalled endpoint counts as a failure
and the round fails with ``UNAVAILABLE``, reason ``UPSTREAM_TIMEOUT``); after
that the stream runs as long as the model writes. While the breaker is open,
rounds fail at once with ``UNAVAILABLE``, reason ``CIRCUIT_OPEN``, and the turn
records that failure like any other. For the model endpoint, a 429 that outlived
the SDK's retries is a failure too (:func:`is_model_failure`): more rounds would
only be rate limited again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence

from daveloper.agent.model import ChatModel, Message, ModelEvent, ToolSpec
from daveloper.breaker import CircuitBreaker, is_failure
from daveloper.errors import ResourceExhausted, Unavailable

__all__ = ["GuardedChatModel", "is_model_failure"]


def is_model_failure(exc: BaseException) -> bool:
    """The LLM breaker's judgement: the endpoint could not answer, or still rate limits us after retries."""
    return is_failure(exc) or (isinstance(exc, ResourceExhausted) and exc.reason == "LLM_RATE_LIMITED")


class GuardedChatModel:
    """Wraps a :class:`ChatModel` with a :class:`CircuitBreaker` and a time-to-first-event limit."""

    def __init__(self, model: ChatModel, breaker: CircuitBreaker, *, first_event_seconds: float) -> None:
        self.inner = model
        self.name = model.name
        self.breaker = breaker
        self.first_event_seconds = first_event_seconds

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str = "",
        temperature: float | None = None,
        max_tokens: int = 0,
        session_id: str = "",
    ) -> AsyncGenerator[ModelEvent, None]:
        self.breaker.check()
        events = self.inner.stream(messages, tools=tools, model=model, temperature=temperature,
                                   max_tokens=max_tokens, session_id=session_id)
        try:
            try:
                async with asyncio.timeout(self.first_event_seconds):
                    first = await anext(events)
            except TimeoutError as exc:
                self.breaker.failure()
                raise Unavailable(f"the model endpoint sent nothing within {self.first_event_seconds:g} s",
                                  reason="UPSTREAM_TIMEOUT", retry_after=1.0,
                                  metadata={"upstream": self.breaker.name}) from exc
            except StopAsyncIteration:
                self.breaker.success()
                return
            except Exception as exc:
                self.breaker.outcome(exc)
                raise
            except BaseException:
                self.breaker.abandon()  # cancelled: no verdict on the endpoint
                raise
            self.breaker.success()
            yield first
            async for event in events:
                yield event
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()

    async def aclose(self) -> None:
        if (close := getattr(self.inner, "aclose", None)) is not None:
            await close()
