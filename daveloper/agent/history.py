"""What a turn's model is sent of the conversation's earlier turns.

Newest first, within a token budget: a turn goes in whole (its question, the
tool calls it made with their results, its answer) while it fits; past that, an
older turn goes in as its question and answer alone, and once even that does
not fit, nothing older goes in. So a follow-up ("what else does that source
say?") still has the passages the previous answer cited, and the oldest tool
results are the first dropped. A turn that failed or is still running is left
out: an empty answer would teach the model to answer nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from daveloper.agent.llm.passages import parse_passages
from daveloper.agent.model import Message, ToolCallRequest
from daveloper.documents.tokens import count_tokens
from generated.daveloper.v1 import Citation, Turn, TurnState

__all__ = ["carried_history", "cited_passages", "last_passage_number"]

_MARKER = re.compile(r"\[(\d{1,6})\]")


def carried_history(past_turns: Sequence[Turn], budget: int) -> list[Message]:
    """The messages of ``past_turns`` (oldest first) that fit ``budget`` tokens, oldest first."""
    carried: list[list[Message]] = []
    for past in reversed(past_turns):
        if past.state is not TurnState.COMPLETED or not past.assistant_text:
            continue
        words = [Message("user", past.user_text), Message("assistant", past.assistant_text)]
        cost = count_tokens(past.user_text) + count_tokens(past.assistant_text)
        tools = _tool_messages(past)
        tools_cost = sum(count_tokens(m.content) + sum(count_tokens(c.arguments) for c in m.tool_calls)
                         for m in tools)
        if tools and cost + tools_cost <= budget:
            carried.append([words[0], *tools, words[1]])
            budget -= cost + tools_cost
        elif cost <= budget:
            carried.append(words)
            budget -= cost
        else:
            break
    return [message for messages in reversed(carried) for message in messages]


def _tool_messages(turn: Turn) -> list[Message]:
    """The turn's tool calls as one assistant message, then each call's result (the OpenAI order)."""
    results = {r.call_id: r for r in turn.tool_results}
    calls = [c for c in turn.tool_calls if c.call_id in results]
    if not calls:
        return []
    requests = tuple(ToolCallRequest(c.call_id, c.name, c.arguments_json) for c in calls)
    return [Message("assistant", "", tool_calls=requests),
            *(Message("tool", results[c.call_id].content, tool_call_id=c.call_id, name=c.name) for c in calls)]


def last_passage_number(past_turns: Sequence[Turn]) -> int:
    """The highest passage number the earlier turns' tool results gave (0 if none)."""
    return max((p.number for turn in past_turns for result in turn.tool_results
                for p in parse_passages(result.content)), default=0)


def cited_passages(text: str, passages: Mapping[int, Citation], earlier: Mapping[int, Citation]) -> list[Citation]:
    """The citations of the ``[n]`` markers in ``text``, in order of first use: this turn's passages,
    or those earlier turns cited. A search hit the answer does not cite is no citation of it."""
    found: dict[int, Citation] = {}
    for match in _MARKER.finditer(text):
        number = int(match.group(1))
        if number not in found and (citation := passages.get(number) or earlier.get(number)) is not None:
            found[number] = citation
    return list(found.values())
