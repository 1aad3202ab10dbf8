"""The agent's settings: the prompt, round and history limits, coalescing, admission and retry bounds."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_SYSTEM_PROMPT", "AgentSettings"]

DEFAULT_SYSTEM_PROMPT = (
    "You are Daveloper, an assistant for software developers. Answer from the user's documents when "
    "they are relevant: call search_documents, then cite passages as [n]. Say so when you do not know."
)


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """What the composition root sets for every turn (from :class:`daveloper.config.Settings`)."""

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
