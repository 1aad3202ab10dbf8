"""``daveloper health``: whether the local instance serves, asked the way its role serves.

A container's health check: one line (``SERVING`` or ``NOT_SERVING: reason``),
exit 0 or 1, within a few seconds, without importing the server's dependencies.

- gRPC (roles ``grpc`` and ``all``): ``grpc.health.v1.Health/Check`` of overall health.
  Ready means SERVING; live means any answer, since a server that reports NOT_SERVING
  because Redis is down, or refuses calls because it is draining, would not be helped by a restart.
- Edge (roles ``edge`` and ``all``): ``/readyz``, or ``/healthz`` when live.

Certificates are not verified: the check asks this machine's server, whose certificate
names its public address, not the loopback one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

import aiohttp
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from daveloper.config import Address, Settings
from daveloper.tls import loopback_client_context

__all__ = ["DEFAULT_TIMEOUT", "HealthOptions", "Verdict", "check_health", "health_options"]

#: Longest a check may take (a container runtime's own timeout should be longer).
DEFAULT_TIMEOUT = 4.0
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class HealthOptions:
    """What to ask: a gRPC address, an edge's base URL, or both."""

    grpc: Address | None = None
    edge: str | None = None
    #: The gRPC address speaks TLS.
    tls: bool = False
    #: Liveness only (the process answers) instead of readiness.
    live: bool = False
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True, slots=True)
class Verdict:
    """Healthy or not, and why (``note`` adds what a live check saw besides)."""

    healthy: bool
    reason: str = ""
    note: str = ""

    def __str__(self) -> str:
        if not self.healthy:
            return f"NOT_SERVING: {self.reason}"
        return f"SERVING ({self.note})" if self.note else "SERVING"


def _loopback(address: Address) -> Address:
    """A wildcard listen address means this machine."""
    return Address(_LOOPBACK.get(address.host, address.host), address.port)


def _edge_url(text: str, *, tls: bool) -> str:
    if "://" in text:
        return text.rstrip("/")
    return f"{'https' if tls else 'http'}://{_loopback(Address.parse(text, name='--edge'))}"


def health_options(env: Mapping[str, str], *, grpc: str | None = None, edge: str | None = None, tls: bool = False,
                   live: bool = False, timeout: float = DEFAULT_TIMEOUT) -> HealthOptions:
    """The checks to run: the addresses given, else those the settings in ``env`` serve for their role.

    Raises :class:`~daveloper.errors.ConfigError` for an address or setting that does not parse.
    """
    if grpc is not None or edge is not None:
        tls = tls or bool(env.get("DAVELOPER_TLS_CERT_FILE", "").strip())
        return HealthOptions(grpc=_loopback(Address.parse(grpc, name="--grpc")) if grpc is not None else None,
                             edge=_edge_url(edge, tls=tls) if edge is not None else None,
                             tls=tls, live=live, timeout=timeout)
    settings = Settings.from_env(env)
    tls = tls or settings.tls_cert_file is not None
    return HealthOptions(
        grpc=_loopback(settings.grpc_addr) if settings.role in ("grpc", "all") else None,
        edge=_edge_url(str(settings.edge_addr), tls=tls) if settings.role in ("edge", "all") else None,
        tls=tls, live=live, timeout=timeout,
    )


async def _grpc(address: Address, options: HealthOptions) -> Verdict:
    where = f"gRPC {address}"
    channel = Channel(address.host, address.port, ssl=loopback_client_context() if options.tls else None)
    try:
        async with asyncio.timeout(options.timeout):
            response = await HealthStub(channel).Check(HealthCheckRequest(service=""))
    except GRPCError as exc:
        if options.live:  # refused, e.g. while draining: still an answer from a running server
            return Verdict(True, note=f"live; {where} answers {exc.status.name}")
        return Verdict(False, f"{where} health check: {exc.status.name} {exc.message or ''}".rstrip())
    except TimeoutError:
        return Verdict(False, f"{where}: no answer within {options.timeout:g} s")
    except (OSError, StreamTerminatedError, ProtocolError) as exc:
        return Verdict(False, f"{where}: {_why(exc)}")
    finally:
        channel.close()
    status = str(HealthCheckResponse.ServingStatus.Name(response.status))
    if response.status == HealthCheckResponse.SERVING:
        return Verdict(True)
    if options.live:
        return Verdict(True, note=f"live; {where} health: {status}")
    return Verdict(False, f"{where} health: {status}")


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _unready(body: object) -> str:
    """What ``/readyz``'s body says is wrong: draining, dependencies down."""
    if not isinstance(body, dict):
        return ""
    causes = ["draining"] if body.get("draining") else []
    dependencies = body.get("dependencies")
    if isinstance(dependencies, dict):
        causes += [f"{name} down" for name, state in sorted(dependencies.items()) if state != "serving"]
    return ", ".join(causes)


async def _edge(base: str, options: HealthOptions) -> Verdict:
    url = base + ("/healthz" if options.live else "/readyz")
    timeout = aiohttp.ClientTimeout(total=options.timeout)
    try:
        async with (aiohttp.ClientSession(timeout=timeout) as http,
                    http.get(url, ssl=False, allow_redirects=False) as response):
            if response.status == 200:
                return Verdict(True)
            try:
                body: object = await response.json(content_type=None)
            except ValueError:
                body = None
            causes = _unready(body)
            return Verdict(False, f"{url}: HTTP {response.status}" + (f" ({causes})" if causes else ""))
    except TimeoutError:
        return Verdict(False, f"{url}: no answer within {options.timeout:g} s")
    except (aiohttp.ClientError, OSError) as exc:
        return Verdict(False, f"{url}: {_why(exc)}")


async def check_health(options: HealthOptions) -> Verdict:
    """Run the checks concurrently; healthy when every one is."""
    checks: list[Awaitable[Verdict]] = []
    if options.grpc is not None:
        checks.append(_grpc(options.grpc, options))
    if options.edge is not None:
        checks.append(_edge(options.edge, options))
    if not checks:
        return Verdict(False, "nothing to check")
    verdicts = await asyncio.gather(*checks)
    failed = [v.reason for v in verdicts if not v.healthy]
    if failed:
        return Verdict(False, "; ".join(failed))
    return Verdict(True, note="; ".join(v.note for v in verdicts if v.note))
