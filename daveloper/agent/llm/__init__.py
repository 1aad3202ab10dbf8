"""Language-model providers behind :class:`~daveloper.agent.model.ChatModel`, chosen by name.

* ``offline`` — :class:`OfflineChatModel`: no endpoint, no weights; asks for tools and
  answers extractively from their results. The default.
* ``openai`` — :class:`OpenAIChatModel`: any OpenAI-compatible ``/chat/completions`` endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daveloper.agent.llm.offline import TOOL_ERROR_PREFIX, OfflineChatModel
from daveloper.agent.llm.passages import NO_PASSAGES, Passage, format_passages, parse_passages
from daveloper.agent.model import ChatModel
from daveloper.errors import ConfigError

if TYPE_CHECKING:
    from daveloper.agent.llm.openai import OpenAIChatModel
    from daveloper.redaction import OutboundRedactor

__all__ = [
    "NO_PASSAGES",
    "PROVIDERS",
    "TOOL_ERROR_PREFIX",
    "OfflineChatModel",
    "OpenAIChatModel",
    "Passage",
    "format_passages",
    "make_chat_model",
    "parse_passages",
]

def __getattr__(name: str) -> Any:
    # The OpenAI provider (and the SDK behind it, ~0.5 s to import) loads when first asked for,
    # so a server on the offline provider never imports it.
    if name == "OpenAIChatModel":
        from daveloper.agent.llm.openai import OpenAIChatModel

        return OpenAIChatModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The provider names :func:`make_chat_model` knows.
PROVIDERS = ("offline", "openai")


def make_chat_model(
    provider: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str = "",
    timeout: float = 60,
    max_retries: int = 3,
    redactor: OutboundRedactor | None = None,
) -> ChatModel:
    """The chat model for ``provider`` (one of :data:`PROVIDERS`); :class:`ConfigError` for anything else."""
    if provider == "offline":
        return OfflineChatModel()
    if provider == "openai":
        if not model:
            raise ConfigError("the openai chat provider needs a model name", metadata={"provider": provider})
        from daveloper.agent.llm.openai import OpenAIChatModel

        return OpenAIChatModel(base_url=base_url or None, api_key=api_key or None, default_model=model,
                               timeout=timeout, max_retries=max_retries, redactor=redactor)
    raise ConfigError(f"unknown chat model provider {provider!r}; expected one of {', '.join(PROVIDERS)}",
                      metadata={"provider": provider})
