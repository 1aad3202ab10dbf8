"""A local OpenAI-compatible ``POST /v1/chat/completions`` for tests: the real SSE wire format, scripted.

Usage::

    async with FakeOpenAI(api_key="sk-test") as server:
        server.enqueue(Script(text=["Hel", "lo"]))
        server.enqueue(Script(tool_calls=[ScriptedCall("search_documents", ['{"query":', ' "redis"}'])]))
        model = OpenAIChatModel(base_url=server.url, api_key="sk-test", default_model="m")
        ...
        server.requests[0]["messages"]   # what the client sent
        await server.disconnected.wait()  # the client closed a stream before its end

Each request takes the next queued :class:`Script`; when the queue is empty, :attr:`FakeOpenAI.fallback`
answers (so ``server.fallback = Script(status=429)`` means "rate limited forever"). ``GET /v1/models``
lists one model, or fails with :attr:`FakeOpenAI.models_status`; :attr:`FakeOpenAI.listings` counts them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["FakeOpenAI", "Script", "ScriptedCall"]


@dataclass(frozen=True)
class ScriptedCall:
    """A tool call the fake model makes; ``arguments`` are streamed as these fragments."""

    name: str
    arguments: Sequence[str] = ("{}",)
    call_id: str = ""  # default: call_<n>, counted over the server's life


@dataclass(frozen=True)
class Script:
    """One scripted answer.

    * ``text``: content pieces, one chunk each; then ``tool_calls``, one after another (index 0, 1, ...).
    * ``delay``: seconds before each chunk.
    * ``stall``: after the content, keep the stream open until the client goes away.
    * ``status``: answer with this HTTP error instead (JSON error body, ``message``; ``retry_after`` seconds
      sent as ``Retry-After``).
    * ``stream_error``: after the content, send an SSE ``{"error": ...}`` event with this message.
    * ``finish_reason``: default ``tool_calls`` when there are tool calls, else ``stop``.
    * usage (sent when the request asks with ``stream_options.include_usage``): ``prompt_tokens``, and
      ``completion_tokens`` (default: one per chunk sent).
    """

    text: Sequence[str] = ()
    tool_calls: Sequence[ScriptedCall] = ()
    delay: float = 0.0
    stall: bool = False
    status: int | None = None
    message: str = "scripted error"
    retry_after: float | None = None
    stream_error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 7
    completion_tokens: int | None = None


_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_exceeded"}


@dataclass
class FakeOpenAI:
    """The server. Knobs: :meth:`enqueue`, :attr:`fallback`, :attr:`api_key`; records: :attr:`requests`,
    :attr:`headers`, :attr:`disconnected`, :attr:`completed`."""

    #: When set, any other bearer token gets a real-looking 401.
    api_key: str | None = None
    #: Answers requests once the queue is empty.
    fallback: Script = field(default_factory=lambda: Script(text=["Hello", " from", " the fake."]))
    #: Request bodies, in order of arrival (failed and retried requests included).
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Request headers, parallel to :attr:`requests`.
    headers: list[dict[str, str]] = field(default_factory=list)
    #: Set when a client went away before its stream ended.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    #: Streams sent to the end (``data: [DONE]``).
    completed: int = 0
    #: ``GET /v1/models`` requests, and the HTTP error they get when set.
    listings: int = 0
    models_status: int | None = None
    url: str = ""

    def __post_init__(self) -> None:
        self._scripts: deque[Script] = deque()
        self._call_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    def enqueue(self, *scripts: Script) -> None:
        """Answer the next requests with these scripts, in order."""
        self._scripts.extend(scripts)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # Cancel the handler when its client disconnects, so a stalled stream notices at once.
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # --- the endpoint -----------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        self.listings += 1
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        if self.models_status is not None:
            return _error(self.models_status, "scripted error")
        model = {"id": "m", "object": "model", "created": 0, "owned_by": "fake"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        script = self._scripts.popleft() if self._scripts else self.fallback
        if script.status is not None:
            headers = {"retry-after": str(script.retry_after)} if script.retry_after is not None else {}
            return _error(script.status, script.message, headers=headers)
        if not body.get("stream"):
            return _error(400, "this fake server only streams: send stream=true")
        return await self._stream(request, body, script)

    async def _stream(self, request: web.Request, body: dict[str, Any], script: Script) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": body.get("model", ""), "system_fingerprint": None}
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        sent = 0

        async def send(data: dict[str, Any] | str, *, pause: bool = True) -> None:
            nonlocal sent
            if pause and script.delay:
                await asyncio.sleep(script.delay)
            payload = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"data: {payload}\n\n".encode())
            sent += 1

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            extra = {"usage": None} if include_usage else {}
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish_reason}], **extra}

        try:
            await send(chunk({"role": "assistant", "content": ""}), pause=False)
            for piece in script.text:
                await send(chunk({"content": piece}))
            for index, call in enumerate(script.tool_calls):
                call_id = call.call_id or f"call_{next(self._call_ids)}"
                await send(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                  "function": {"name": call.name, "arguments": ""}}]}))
                for fragment in call.arguments:
                    await send(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
            if script.stream_error is not None:
                await send({"error": {"message": script.stream_error, "type": "server_error"}})
            elif script.stall:
                await asyncio.Event().wait()  # until the client goes away (handler cancellation)
            else:
                finish = script.finish_reason or ("tool_calls" if script.tool_calls else "stop")
                await send(chunk({}, finish))
                if include_usage:
                    completion = sent if script.completion_tokens is None else script.completion_tokens
                    usage = {"prompt_tokens": script.prompt_tokens, "completion_tokens": completion,
                             "total_tokens": script.prompt_tokens + completion}
                    await send({**base, "choices": [], "usage": usage}, pause=False)
            await send("[DONE]", pause=False)
            await response.write_eof()
            self.completed += 1
        except (ConnectionResetError, asyncio.CancelledError):
            # A failed write or a cancelled handler: the client closed the stream early.
            self.disconnected.set()
            raise
        return response


def _error(status: int, message: str, *, code: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    error = {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)
