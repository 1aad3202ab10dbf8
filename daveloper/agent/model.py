"""What flows between a turn and a language model: messages in, a stream of model events out."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "ChatModel",
    "Message",
    "ModelDone",
    "ModelEvent",
    "TextDelta",
    "ToolCallRequest",
    "ToolSpec",
]


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    """The model asks for a tool; ``arguments`` is the JSON text exactly as the model produced it."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One message of the conversation sent to the model (OpenAI chat roles)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    #: For ``assistant`` messages that called tools.
    tool_calls: tuple[ToolCallRequest, ...] = ()
    #: For ``tool`` messages: which call this answers.
    tool_call_id: str = ""
    #: For ``tool`` messages: the tool's name.
    name: str = ""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ModelDone:
    """The last event of a model stream."""

    #: ``stop``, ``length`` or ``tool_calls`` (OpenAI's finish reasons).
    finish_reason: str
    tool_calls: tuple[ToolCallRequest, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Values the provider redacted from what it sent (``DAVELOPER_REDACT``).
    redactions: int = 0


ModelEvent = TextDelta | ModelDone


class ChatModel(Protocol):
    """A language model that streams. Closing or cancelling the generator must close the upstream request."""

    name: str

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] = (),
        model: str = "",
        temperature: float | None = None,
        max_tokens: int = 0,
        session_id: str = "",
    ) -> AsyncGenerator[ModelEvent, None]: ...
