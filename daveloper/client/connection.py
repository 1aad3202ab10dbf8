"""One authenticated gRPC channel per command, with a deadline on every call.

The token comes from ``--token`` / ``DAVELOPER_TOKEN`` when given; otherwise a
session token is cached per server in a file only the user can read, created
with ``CreateSession`` when it is missing or the server refuses it.

gRPC failures are translated here, at the client's boundary, into
:class:`CommandFailed` with a message for humans.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from daveloper.client.retry import MayRetry, RetryPolicy, retrying
from daveloper.config import Address
from generated.daveloper.v1 import (
    CreateSessionRequest,
    Failure,
    GetSessionRequest,
    SessionServiceStub,
)

__all__ = ["CALL_TIMEOUT", "RETRYABLE_STATUSES", "ClientOptions", "CommandFailed", "Connection", "TokenCache",
           "Unreachable", "describe_error", "describe_failure", "open_channel", "open_connection", "retry_delay",
           "translate_errors"]

#: Deadline of unary calls (sessions, cancels, health).
CALL_TIMEOUT = 10.0
#: Keepalive pings notice a dead connection on a quiet stream long before its deadline.
_KEEPALIVE = Configuration(_keepalive_time=10.0, _keepalive_timeout=5.0)
#: Statuses that may carry a "try again in …" (a rate limit, a saturated or restarting server).
RETRYABLE_STATUSES = frozenset({Status.RESOURCE_EXHAUSTED, Status.UNAVAILABLE})


class CommandFailed(MayRetry):
    """A command could not do its work; ``message`` says why, for humans."""

    def __init__(self, message: str, *, exit_code: int = 1, detail: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.message = message
        self.exit_code = exit_code
        #: The cause alone, without what was being done.
        self.detail = detail or message


class Unreachable(CommandFailed):
    """The server could not be reached at all: every further call would fail the same way."""


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Where and how the client commands connect."""

    server: Address
    #: An explicit token (``--token`` or ``DAVELOPER_TOKEN``); ``None`` uses the cache.
    token: str | None
    token_cache: Path
    #: CA bundle that signs the server's certificate; implies TLS.
    tls_ca: Path | None = None
    #: TLS with the system's trusted CAs.
    tls: bool = False
    #: Deadline of long calls: a chat turn, an upload, a crawl.
    timeout: float = 600.0
    #: How calls the server refused for now (``RetryInfo``) are resent.
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_ca is None and not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise CommandFailed(f"cannot load the CA file {self.tls_ca}: {exc}") from exc
        context.set_alpn_protocols(["h2"])
        return context

    def connect_address(self) -> tuple[str, int]:
        """The address to dial: a wildcard listen address means this machine."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.server.host, self.server.host)
        return host, self.server.port


class TokenCache:
    """Session tokens per server in one JSON file, mode 0600 in a 0700 directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}

    def load(self, server: str) -> str | None:
        return self._read().get(server)

    def store(self, server: str, token: str) -> None:
        tokens = self._read() | {server: token}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Write then rename, so a concurrent command never reads half a file; mkstemp creates it 0600.
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".tokens-")
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(tokens, file, indent=1)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise


def _reason(error: GRPCError) -> str:
    for detail in error.details or ():
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return str(detail.reason)
    return ""


def retry_delay(error: GRPCError) -> float | None:
    """Seconds the server asks to wait before resending, or ``None`` when it does not ask for a retry."""
    if error.status not in RETRYABLE_STATUSES:
        return None
    for detail in error.details or ():
        if isinstance(detail, error_details_pb2.RetryInfo):
            return max(0.0, float(detail.retry_delay.ToTimedelta().total_seconds()))
    return None


def describe_error(error: GRPCError) -> str:
    """``message (STATUS, REASON)`` for a gRPC error."""
    reason = _reason(error)
    tag = f"{error.status.name}, {reason}" if reason else error.status.name
    return f"{error.message or 'no message'} ({tag})"


def describe_failure(failure: Failure) -> str:
    """The same for a ``Failure`` carried in a stream event."""
    try:
        status = Status(failure.code).name
    except ValueError:
        status = str(failure.code)
    tag = f"{status}, {failure.reason}" if failure.reason else status
    return f"{failure.message or 'no message'} ({tag})"


@contextlib.contextmanager
def translate_errors(server: Address, what: str) -> Iterator[None]:
    """Turn gRPC and connection failures of ``what`` into :class:`CommandFailed`."""
    try:
        yield
    except GRPCError as exc:
        detail = describe_error(exc)
        raise CommandFailed(f"{what} failed: {detail}", detail=detail, retry_after=retry_delay(exc)) from exc
    except StreamTerminatedError as exc:
        detail = f"the connection to {server} was lost ({exc})"
        raise CommandFailed(f"{what} failed: {detail}", detail=detail) from exc
    except TimeoutError as exc:
        detail = f"no answer from {server} before the deadline"
        raise CommandFailed(f"{what} failed: {detail}", detail=detail) from exc
    except OSError as exc:
        raise Unreachable(f"cannot reach the server at {server}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class Connection:
    """An open channel and the bearer token its calls carry."""

    channel: Channel
    options: ClientOptions
    token: str

    @property
    def metadata(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def retry(self) -> RetryPolicy:
        return self.options.retry


def open_channel(options: ClientOptions) -> Channel:
    """A channel to the server (not connected until the first call)."""
    host, port = options.connect_address()
    return Channel(host, port, ssl=options.ssl_context(), config=_KEEPALIVE)


async def _session_token(channel: Channel, options: ClientOptions) -> str:
    if options.token:
        return options.token  # the user's choice: a refusal is reported by the command's own call
    cache = TokenCache(options.token_cache)
    server = str(options.server)
    sessions = SessionServiceStub(channel)
    if cached := cache.load(server):
        try:
            await sessions.get_session(GetSessionRequest(), timeout=CALL_TIMEOUT,
                                       metadata={"authorization": f"Bearer {cached}"})
        except GRPCError as exc:
            if exc.status is not Status.UNAUTHENTICATED:
                raise
        else:
            return cached
    created = await sessions.create_session(CreateSessionRequest(labels={"client": "daveloper-cli"}),
                                            timeout=CALL_TIMEOUT)
    cache.store(server, created.token)
    return str(created.token)


@contextlib.asynccontextmanager
async def open_connection(options: ClientOptions) -> AsyncIterator[Connection]:
    """An authenticated connection; the channel closes on exit."""
    channel = open_channel(options)

    async def authenticate() -> str:
        with translate_errors(options.server, "authenticating"):
            return await _session_token(channel, options)

    try:
        # Safe to resend: a refused creation created nothing, and an unused session just expires.
        token = await retrying(authenticate, options.retry)
        yield Connection(channel, options, token)
    finally:
        channel.close()
