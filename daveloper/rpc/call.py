"""``Call``: what a servicer method gets besides its request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from grpclib.metadata import Deadline
from grpclib.server import Stream

__all__ = ["Call", "Principal"]

RecvT = TypeVar("RecvT")
SendT = TypeVar("SendT")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a session, or the operator's admin token."""

    session_id: str
    admin: bool = False


class Call(Generic[RecvT, SendT]):
    """One RPC in flight, as its handler sees it.

    Reads request metadata, deadline and peer; sends messages (``send``) and
    reads them (``recv`` / ``async for``) independently, so a bidi handler can
    read in one task while it writes from another; adds trailing metadata.
    """

    __slots__ = ("_gate", "_stream", "method", "principal", "request_id", "trailers")

    def __init__(
        self,
        stream: Stream[RecvT, SendT],
        *,
        method: str,
        request_id: str,
        principal: Principal | None,
        trailers: dict[str, str],
        gate: Any = None,
    ) -> None:
        self._stream = stream
        self._gate = gate
        #: The full method path, e.g. ``/daveloper.v1.SessionService/CreateSession``.
        self.method = method
        self.request_id = request_id
        self.principal = principal
        #: Trailing metadata sent with the status when the call ends (add to it freely).
        self.trailers = trailers

    @property
    def metadata(self) -> Any:
        """Request metadata (a multidict of str → str, ``-bin`` keys → bytes)."""
        return self._stream.metadata

    @property
    def deadline(self) -> Deadline | None:
        return self._stream.deadline

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline, or ``None`` if it set none."""
        return None if self._stream.deadline is None else self._stream.deadline.time_remaining()

    @property
    def peer(self) -> str:
        """The caller's address as ``host:port`` (or the socket path)."""
        addr = self._stream.peer.addr()
        return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr or "")

    @property
    def session_id(self) -> str:
        """The authenticated session; raises if the method is public (has none)."""
        if self.principal is None:
            raise RuntimeError(f"{self.method} is public: it has no session")
        return self.principal.session_id

    async def charge(self, method_class: str) -> None:
        """Charge one unit of work of ``method_class`` (e.g. a chat turn) to the caller's rate limits."""
        if self._gate is not None:
            await self._gate.charge(self, method_class)

    async def recv(self) -> RecvT | None:
        """The next request message, or ``None`` once the client has half-closed."""
        return await self._stream.recv_message()

    async def __aiter__(self) -> AsyncIterator[RecvT]:
        while (message := await self._stream.recv_message()) is not None:
            yield message

    async def send(self, message: SendT) -> None:
        """Send one response message (waits while the client's flow-control window is full)."""
        await self._stream.send_message(message)

    async def send_headers(self, **metadata: str) -> None:
        """Send initial metadata now (otherwise it goes out with the first message)."""
        await self._stream.send_initial_metadata(metadata=metadata)
