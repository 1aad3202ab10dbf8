"""TLS contexts from the configured certificate: one for gRPC (ALPN h2), one for the edge (HTTP/1.1).

The edge reaches its own process's gRPC server over loopback; that hop uses TLS
too (the server accepts nothing else) but does not verify the certificate,
which is issued for the public name, not for the loopback address.
"""

from __future__ import annotations

import ssl

from daveloper.config import Settings
from daveloper.errors import ConfigError

__all__ = ["edge_context", "grpc_context", "loopback_client_context"]


def _server_context(settings: Settings, alpn: list[str]) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {settings.tls_cert_file}: {exc}") from exc
    context.set_alpn_protocols(alpn)
    return context


def grpc_context(settings: Settings) -> ssl.SSLContext | None:
    """The gRPC server's context (HTTP/2 only), or None when TLS is not configured."""
    return _server_context(settings, ["h2"])


def edge_context(settings: Settings) -> ssl.SSLContext | None:
    """The edge's context (HTTP/1.1: WebSocket upgrades need it), or None."""
    return _server_context(settings, ["http/1.1"])


def loopback_client_context() -> ssl.SSLContext:
    """For the edge's hop to the gRPC server in its own process (see the module docstring)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context
