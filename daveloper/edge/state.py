"""What every socket and HTTP request of one edge shares: settings, codec, upstream, admission."""

from __future__ import annotations

import collections
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from grpclib.const import Status

from daveloper.config import Settings
from daveloper.edge.bridge import Upstream, unary
from daveloper.edge.codec import MessageCodec
from daveloper.edge.protocol import CloseCode, ProtocolViolation
from daveloper.health import HealthMonitor
from daveloper.metrics import Metrics
from daveloper.rpc.interceptor import CLIENT_ADDRESS_KEY
from daveloper.sessions import MAX_TOKEN_CHARS, well_formed_token

if TYPE_CHECKING:
    from daveloper.edge.socket import EdgeSocket

__all__ = ["HANDSHAKE_SECONDS", "EdgeState", "credentials"]

log = logging.getLogger("daveloper.edge")

#: A socket must send ``hello`` within this long (or ``ws_idle_seconds`` if shorter).
HANDSHAKE_SECONDS = 10.0
#: Deadline of the handshake's token check.
_ADMIT_TIMEOUT = 5.0
_GET_SESSION = "/daveloper.v1.SessionService/GetSession"


def credentials(token: str, client_address: str) -> list[tuple[str, str | bytes]]:
    """Metadata the edge adds to every upstream call: the session token (if any) and the client's address."""
    pairs: list[tuple[str, str | bytes]] = [(CLIENT_ADDRESS_KEY, client_address)] if client_address else []
    return [("authorization", f"Bearer {token}"), *pairs] if token else pairs


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(entry, strict=False)


@dataclass(eq=False)
class EdgeState:
    """Shared by all sockets and routes of one running edge."""

    settings: Settings
    codec: MessageCodec
    upstream: Upstream
    health: HealthMonitor
    metrics: Metrics
    draining: bool = False
    sockets: set[EdgeSocket] = field(default_factory=set)
    #: Origins of the edge's own pages (set once it is bound: see ``server.own_origins``).
    own_origins: frozenset[str] = frozenset()
    _per_session: collections.Counter[str] = field(default_factory=collections.Counter)
    _trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._trusted = [_network(entry) for entry in self.settings.trusted_proxies]

    def _trusted_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def client_address(self, request: web.BaseRequest) -> str:
        """The client's address: the peer's, or from ``X-Forwarded-For`` when the peer is a trusted proxy.

        The forwarded list is read right to left, skipping trusted proxies; the
        first address that is not one is the client (anything left of it could
        have been written by the client itself).
        """
        peer = request.remote or ""
        if not self._trusted_proxy(peer):
            return peer
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")]
        for hop in reversed([h for h in hops if h]):
            if not self._trusted_proxy(hop):
                return hop[:64]
        return peer

    @property
    def handshake_seconds(self) -> float:
        return min(HANDSHAKE_SECONDS, self.settings.ws_idle_seconds)

    async def admit(self, token: str, client_address: str = "") -> str:
        """Check a handshake token and take a socket slot of its session; returns the session id.

        The edge validates early (``SessionService/GetSession`` upstream, asking for the
        session field only: no quota lookup) so a bad
        token fails the handshake instead of every stream, and so sockets can be
        counted per session. Servicers still authenticate every call. An empty
        token admits a sessionless socket (only public methods will succeed);
        the admin token and other tokens without a session are not counted.
        Counting is per process: behind several edge processes the limit applies to each.
        """
        if not token:
            return ""
        if not well_formed_token(token):
            # Refused here, before it is encoded into upstream metadata (HPACK cost grows
            # faster than the header) or shown anywhere.
            raise ProtocolViolation(CloseCode.UNAUTHENTICATED,
                                    f"token refused: a token is printable ASCII of at most {MAX_TOKEN_CHARS} "
                                    "characters, as CreateSession issued it")
        method = self.codec.methods[_GET_SESSION]
        # Only the session: the token check (signature, expiry, the record) without reading quotas or rate limits.
        data, status = await unary(self.upstream, method, b"",
                                   metadata=[*credentials(token, client_address), ("x-goog-fieldmask", "session")],
                                   time_limit=_ADMIT_TIMEOUT)
        if status.code in (Status.UNAUTHENTICATED, Status.PERMISSION_DENIED):
            raise ProtocolViolation(CloseCode.UNAUTHENTICATED, f"token refused: {status.message}")
        if status.code in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.RESOURCE_EXHAUSTED):
            raise ProtocolViolation(CloseCode.TRY_AGAIN_LATER, "cannot check the token now")
        if not status.ok:
            return ""
        session_id = str(self.codec.to_json(method.output, data).get("session", {}).get("id", ""))
        if session_id:
            if self._per_session[session_id] >= self.settings.ws_max_sockets_per_session:
                raise ProtocolViolation(CloseCode.TOO_MANY_SOCKETS, "too many sockets for this session")
            self._per_session[session_id] += 1
        return session_id

    def release(self, session_id: str) -> None:
        """Give back the slot :meth:`admit` took."""
        if session_id:
            self._per_session[session_id] -= 1
            if self._per_session[session_id] <= 0:
                del self._per_session[session_id]
