"""Chat completions from any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM).

The official ``openai`` SDK's client holds the HTTP connections and the settings (base URL,
key, timeout, retries). The streamed completion request is sent through its HTTP client
directly, retried as the SDK retries (429, 408/409, 5xx, connection errors and timeouts, with
exponential backoff that honours ``Retry-After``): the SDK's own request path (parameter
transform, options, request building) cost about 1 ms of CPU per request, a sixth of a
turn's start. This module converts messages, folds the streamed chunks into
:class:`ModelEvent`s and translates the SDK's exceptions into Daveloper's error tree:

=====================================  ===================================================
SDK error (after the SDK's retries)    Daveloper error (reason)
=====================================  ===================================================
401 / 403                              ``FailedPrecondition`` (``LLM_AUTH_FAILED``)
404                                    ``FailedPrecondition`` (``LLM_MISCONFIGURED``)
429                                    ``ResourceExhausted`` (``LLM_RATE_LIMITED``) + retry delay
400, 422 and other 4xx                 ``InvalidArgument`` (``LLM_REQUEST_REJECTED``)
5xx, 408, 409, connection, timeout     ``Unavailable`` (``LLM_UNAVAILABLE``)
=====================================  ===================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import json
import math
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import openai
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from daveloper.agent.model import Message, ModelDone, ModelEvent, TextDelta, ToolCallRequest, ToolSpec
from daveloper.errors import DaveloperError, FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from daveloper.redaction import OutboundRedactor, redact_contents

__all__ = ["OpenAIChatModel"]

#: How much of an upstream error message is quoted back (it may echo large parts of the prompt).
_MAX_ERROR_MESSAGE = 300
#: Retry delay suggested to our callers when the upstream gives none.
_DEFAULT_RATE_LIMIT_DELAY = 5.0
_DEFAULT_UNAVAILABLE_DELAY = 1.0
#: Concurrent requests to the endpoint (one per running turn), each on a kept-alive connection.
_MAX_CONNECTIONS = 1000
#: The SDK's retry backoff: 0.5 s doubling to at most 8 s, less up to 25 % jitter; a server's
#: ``Retry-After`` of up to two minutes is honoured as it is (a longer one is not retried).
_INITIAL_RETRY_DELAY, _MAX_RETRY_DELAY, _MAX_RETRY_AFTER = 0.5, 8.0, 120.0


def _truncate(text: str, limit: int = _MAX_ERROR_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (number or HTTP date), if the server sent one."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) / divisor, 0.0)
        except ValueError:
            parsed = email.utils.parsedate_tz(value)
            if parsed is not None:
                return max(float(email.utils.mktime_tz(parsed)) - time.time(), 0.0)
    return None


def _retry_delay(retries: int, retry_after: float | None) -> float:
    """Seconds before retry number ``retries + 1``: the server's delay if it gave a usable one, else the backoff."""
    if retry_after is not None and math.isfinite(retry_after) and 0 < retry_after <= _MAX_RETRY_AFTER:
        return retry_after
    return min(_INITIAL_RETRY_DELAY * 2.0 ** min(retries, 1000), _MAX_RETRY_DELAY) * (1 - 0.25 * random.random())


def _translate(exc: openai.OpenAIError, model: str) -> DaveloperError:
    """The Daveloper error for an SDK exception (raised after the SDK's own retries)."""
    meta = {"model": model}
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _truncate(exc.message)
        if status in (401, 403):
            # A bad or unauthorised key is the deployment's problem, not the caller's: retrying cannot help.
            return FailedPrecondition(f"the language model endpoint refused our credentials: {message}",
                                      reason="LLM_AUTH_FAILED", metadata=meta)
        if status == 404:
            return FailedPrecondition(f"the language model endpoint does not know this model or path: {message}",
                                      reason="LLM_MISCONFIGURED", metadata=meta)
        if status == 429:
            delay = _retry_after(exc.response.headers)
            return ResourceExhausted(f"the language model endpoint is rate limiting us: {message}",
                                     reason="LLM_RATE_LIMITED", metadata=meta,
                                     retry_after=_DEFAULT_RATE_LIMIT_DELAY if delay is None else delay)
        if 400 <= status < 500 and status not in (408, 409):
            return InvalidArgument(f"the language model endpoint rejected the request: {message}",
                                   reason="LLM_REQUEST_REJECTED", metadata=meta)
        return Unavailable(f"the language model endpoint answered HTTP {status}: {message}",
                           reason="LLM_UNAVAILABLE", metadata=meta, retry_after=_DEFAULT_UNAVAILABLE_DELAY)
    if isinstance(exc, openai.APITimeoutError):
        text = "the language model endpoint timed out"
    elif isinstance(exc, openai.APIConnectionError):
        text = "the language model endpoint is unreachable"
    else:
        # An error event inside the stream, or an answer the SDK could not parse.
        text = f"the language model endpoint failed: {_truncate(str(exc))}"
    return Unavailable(text, reason="LLM_UNAVAILABLE", metadata=meta, retry_after=_DEFAULT_UNAVAILABLE_DELAY)


def to_openai_messages(messages: Sequence[Message]) -> list[ChatCompletionMessageParam]:
    """Our messages in the chat completions wire format."""
    out: list[ChatCompletionMessageParam] = []
    for message in messages:
        if message.role == "system":
            out.append({"role": "system", "content": message.content})
        elif message.role == "user":
            out.append({"role": "user", "content": message.content})
        elif message.role == "tool":
            out.append({"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content})
        elif message.tool_calls:
            out.append({
                "role": "assistant",
                # ``null`` rather than "" next to tool calls: some compatible servers reject empty text parts.
                "content": message.content or None,
                "tool_calls": [
                    {"id": call.call_id, "type": "function",
                     "function": {"name": call.name, "arguments": call.arguments}}
                    for call in message.tool_calls
                ],
            })
        else:
            out.append({"role": "assistant", "content": message.content})
    return out


def to_openai_tools(tools: Sequence[ToolSpec]) -> list[ChatCompletionFunctionToolParam]:
    """Our tool specs as OpenAI function tools."""
    return [
        {"type": "function",
         "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters}}
        for tool in tools
    ]


@dataclass
class _PartialCall:
    """A tool call being streamed: id and name come first, the arguments in pieces."""

    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


async def _sse_data(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event (several ``data:`` lines joined by newlines), as bytes.

    Bytes, split here: SSE is UTF-8 by definition and ``json.loads`` reads UTF-8 bytes, so the
    text decoding (and the per-response charset parsing) of ``aiter_lines`` is work for nothing.
    Transport failures become the SDK's own exceptions, as its typed stream would raise them.
    """
    data: list[bytes] = []
    rest = b""
    try:
        async for chunk in response.aiter_bytes():
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.startswith(b"data:"):
                    data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                elif not line and data:
                    yield b"\n".join(data)
                    data = []
        if rest.startswith(b"data:"):
            data.append(rest[6:] if rest.startswith(b"data: ") else rest[5:])
        if data:
            yield b"\n".join(data)
    except httpx2.TimeoutException as exc:
        raise openai.APITimeoutError(request=response.request) from exc
    except (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream) as exc:
        raise openai.APIConnectionError(request=response.request) from exc


class _ChunkFold:
    """Folds ``chat.completion.chunk`` objects (plain JSON) into text deltas and one :class:`ModelDone`."""

    def __init__(self) -> None:
        self.calls: dict[int, _PartialCall] = {}
        self.finish_reason = ""
        self.prompt_tokens = self.completion_tokens = 0

    def feed(self, data: bytes, request: httpx2.Request) -> str:
        """Take one chunk's JSON; returns its text (may be empty). An error event raises ``openai.APIError``."""
        try:
            chunk: Any = json.loads(data)
        except ValueError:
            chunk = data
        if not isinstance(chunk, dict):
            raise openai.APIError(f"unexpected stream chunk: {_truncate(repr(chunk))}", request=request, body=chunk)
        if error := chunk.get("error"):
            message = error.get("message") if isinstance(error, dict) else None
            raise openai.APIError(message if isinstance(message, str) and message
                                  else "An error occurred during streaming", request=request, body=error)
        if usage := chunk.get("usage"):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        text = ""
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # we never ask for n > 1
            if reason := choice.get("finish_reason"):
                self.finish_reason = reason
            delta = choice.get("delta") or {}
            for piece in delta.get("tool_calls") or ():
                call = self.calls.setdefault(int(piece.get("index", 0)), _PartialCall())
                if piece.get("id"):
                    call.call_id = piece["id"]
                if function := piece.get("function"):
                    if function.get("name"):
                        call.name += function["name"]
                    if function.get("arguments"):
                        call.arguments.append(function["arguments"])
            if content := delta.get("content"):
                text += content
        return text

    def done(self) -> ModelDone:
        tool_calls = tuple(
            ToolCallRequest(call_id=call.call_id or f"call_{index}", name=call.name,
                            arguments="".join(call.arguments) or "{}")
            for index, call in sorted(self.calls.items())
        )
        finish_reason = self.finish_reason
        if tool_calls and finish_reason in ("", "stop", "function_call"):
            # Some compatible servers (older Ollama, llama.cpp) say "stop" after tool calls.
            finish_reason = "tool_calls"
        return ModelDone(finish_reason=finish_reason or "stop", tool_calls=tool_calls,
                         prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)


class OpenAIChatModel:
    """A :class:`~daveloper.agent.model.ChatModel` over an OpenAI-compatible ``/chat/completions`` endpoint.

    Every call streams (``stream=True``, usage requested in the last chunk). Closing
    or cancelling the iteration closes the upstream HTTP response, so the endpoint
    stops generating (and billing) for an answer nobody reads.
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        default_model: str,
        timeout: float = 60,
        max_retries: int = 3,
        client: openai.AsyncOpenAI | None = None,
        redactor: OutboundRedactor | None = None,
    ) -> None:
        if not default_model:
            raise ValueError("default_model must not be empty")
        self.default_model = default_model
        #: Redacts what is sent (``DAVELOPER_REDACT``) and turns session ids into pseudonyms.
        self.redactor = redactor or OutboundRedactor()
        self._owns_client = client is None
        # Local servers (Ollama, llama.cpp) want no key, but the SDK insists on one.
        self._client = client or openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=max_retries,
            # The SDK's aiohttp transport (vendored in the SDK; aiohttp is ours already): reading a stream
            # through it costs a fraction of httpx's default anyio/httpcore/h11 stack per chunk. As many
            # idle connections kept as may be open: the SDK keeps 100, so past 100 concurrent turns every
            # request paid a new connection (a TLS handshake against a real endpoint).
            http_client=openai.DefaultAioHttpClient(limits=httpx2.Limits(
                max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_CONNECTIONS)),
        )
        base = self._client.base_url
        self._url = base.copy_with(raw_path=base.raw_path.rstrip(b"/") + b"/chat/completions")
        # The SDK's headers (its user agent and platform headers, less those it omits) and the key's.
        self._headers = {name: value for name, value in {**self._client.default_headers,
                                                         **self._client.auth_headers}.items()
                         if isinstance(value, str)}
        self._headers["Content-Type"] = "application/json"

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
        """Stream one completion: :class:`TextDelta`s, then one :class:`ModelDone`."""
        model = model or self.default_model
        wire = to_openai_messages(messages)
        redactions = redact_contents(wire, self.redactor)
        body: dict[str, object] = {
            "messages": wire,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = to_openai_tools(tools)
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens > 0:
            # ``max_tokens`` rather than ``max_completion_tokens``: every compatible server knows it.
            body["max_tokens"] = max_tokens
        if session_id:
            # Lets the provider group a session's requests (abuse monitoring, caching) without learning its id.
            body["user"] = self.redactor.pseudonym(session_id)
        body["model"], body["stream"] = model, True
        fold = _ChunkFold()
        try:
            # The raw response rather than the SDK's typed stream: building a pydantic model per chunk
            # cost more CPU than everything else on the token path. Leaving the block (end, error,
            # ``aclose()``, cancellation) closes the upstream response, so the endpoint stops generating.
            response = await self._post(json.dumps(body).encode())
            try:
                async for data in _sse_data(response):
                    if data.startswith(b"[DONE]"):
                        break
                    text = fold.feed(data, response.request)
                    if text:
                        yield TextDelta(text)
            finally:
                await response.aclose()
        except openai.OpenAIError as exc:
            raise _translate(exc, model) from exc
        yield dataclasses.replace(fold.done(), redactions=redactions)

    async def _post(self, content: bytes) -> httpx2.Response:
        """``POST /chat/completions``, streaming; retried as the SDK retries; the SDK's exceptions on failure."""
        client = self._client
        # The SDK client's own HTTP client (its connection pool), its retry rule and its status errors:
        # private to the SDK, which constraints.txt pins.
        http, url, headers = client._client, self._url, self._headers
        retries = 0
        while True:
            request = http.build_request("POST", url, content=content, headers=headers, timeout=client.timeout)
            failure: openai.APIConnectionError | None = None
            try:
                response = await http.send(request, stream=True)
            except httpx2.TimeoutException as exc:
                failure = openai.APITimeoutError(request=request)
                failure.__cause__ = exc
            except Exception as exc:  # as the SDK: any other transport failure is a connection error
                failure = openai.APIConnectionError(request=request)
                failure.__cause__ = exc
            if failure is None and response.is_success:
                return response
            if failure is None:
                retry = retries < client.max_retries and client._should_retry(response)
                if not retry:
                    await response.aread()
                    await response.aclose()
                    raise client._make_status_error_from_response(response)
                await response.aclose()
                delay = _retry_delay(retries, _retry_after(response.headers))
            elif retries < client.max_retries:
                delay = _retry_delay(retries, None)
            else:
                raise failure
            retries += 1
            await asyncio.sleep(delay)

    async def ping(self) -> None:
        """One cheap request (``GET /models``, no retries) that fails as :meth:`stream` would if the endpoint is
        unreachable or refuses our key; for a readiness probe (which bounds its time)."""
        try:
            await self._client.with_options(max_retries=0).models.list()
        except openai.OpenAIError as exc:
            raise _translate(exc, self.default_model) from exc

    async def aclose(self) -> None:
        """Close the HTTP client (only if this model created it)."""
        if self._owns_client:
            await self._client.close()
