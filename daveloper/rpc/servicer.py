"""``Servicer``: the base of every service implementation.

A servicer names the generated betterproto2 base it implements and defines
methods named exactly like the RPCs::

    class SessionService(Servicer):
        base = SessionServiceBase

        @public
        async def CreateSession(self, request: CreateSessionRequest, call: Call) -> CreateSessionResponse: ...

Handler shapes follow the RPC's cardinality:

* unary → ``async def M(self, request, call) -> Response``
* server streaming → ``async def M(self, request, call)``, an async generator yielding responses
* client streaming → ``async def M(self, call) -> Response``, reading ``async for req in call``
* bidi → ``async def M(self, call)``: read with ``call.recv()``/``async for`` and write with
  ``call.send()``, from as many tasks as it likes (or yield responses instead of sending)

Methods the servicer does not define keep the generated behaviour (UNIMPLEMENTED).
Every method requires a valid session unless marked :func:`public`. A servicer may
refuse calls before they are authenticated with :meth:`Servicer.precheck`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from grpclib.const import Cardinality, Handler
from grpclib.server import Stream

from daveloper.rpc.call import Call, Principal
from daveloper.rpc.context import request_id_var, session_id_var, trailers_var

__all__ = ["Authenticator", "Gate", "Servicer", "public"]

F = TypeVar("F", bound=Callable[..., Any])

_PUBLIC_ATTR = "__daveloper_public__"


def public(method: F) -> F:
    """Mark a servicer method as callable without a session token."""
    setattr(method, _PUBLIC_ATTR, True)
    return method


class Authenticator(Protocol):
    """Turns request metadata into the caller's identity, or raises ``Unauthenticated``."""

    async def authenticate(self, metadata: Any) -> Principal: ...


@runtime_checkable
class Gate(Authenticator, Protocol):
    """An authenticator that also admits calls (scope and rate limits); see :class:`daveloper.guard.Guard`."""

    async def admit(self, call: Call[Any, Any]) -> None: ...

    async def charge(self, call: Call[Any, Any], method_class: str) -> None: ...


class Servicer:
    """Binds RPC-named methods to grpclib handlers (see the module docstring)."""

    #: The generated ``XxxServiceBase`` this servicer implements.
    base: ClassVar[type[Any]]

    def __init__(self, *, auth: Authenticator) -> None:
        self._auth = auth

    def precheck(self, method: str) -> AbstractContextManager[object]:
        """What a call of ``method`` (the full path) holds while it runs, entered before it is authenticated;
        entering it may refuse the call (raise). By default nothing.

        For in-process checks only (no I/O): a refusal here costs the server no Redis round trip and no
        request decoding, which matters when thousands are refused at once.
        """
        return contextlib.nullcontext()

    def __mapping__(self) -> dict[str, Handler]:
        mapping: dict[str, Handler] = self.base().__mapping__()
        for path, handler in mapping.items():
            implementation = getattr(self, path.rsplit("/", 1)[1], None)
            if implementation is not None:
                mapping[path] = handler._replace(func=self._bind(path, implementation, handler.cardinality))
        return mapping

    def _bind(
        self, path: str, method: Callable[..., Any], cardinality: Cardinality
    ) -> Callable[[Stream[Any, Any]], Coroutine[Any, Any, None]]:
        is_public = getattr(method, _PUBLIC_ATTR, False)
        streams_out = inspect.isasyncgenfunction(method)
        auth = self._auth
        gate = auth if isinstance(auth, Gate) else None

        precheck = self.precheck

        async def handle(stream: Stream[Any, Any]) -> None:
            with precheck(path):
                await serve(stream)

        async def serve(stream: Stream[Any, Any]) -> None:
            principal = None if is_public else await auth.authenticate(stream.metadata)
            if principal is not None:
                session_id_var.set(principal.session_id)
            call: Call[Any, Any] = Call(
                stream,
                method=path,
                request_id=request_id_var.get(),
                principal=principal,
                trailers=trailers_var.get({}),  # without the Interceptor nothing sends them
                gate=gate,
            )
            if gate is not None:
                await gate.admit(call)
            args: tuple[Any, ...] = (call,)
            if not cardinality.client_streaming:
                args = (await stream.recv_message(), call)
            if streams_out:
                responses: AsyncIterator[Any] = method(*args)
                async for response in responses:
                    await stream.send_message(response)
                return
            result = await method(*args)
            if not cardinality.server_streaming:
                await stream.send_message(result)

        return handle
