"""Per-request context carried in ContextVars: set once per RPC, read anywhere (logs, errors)."""

from __future__ import annotations

import contextvars

__all__ = [
    "client_address_var",
    "current_request_id",
    "current_session_id",
    "method_var",
    "request_id_var",
    "session_id_var",
    "trailers_var",
]

#: The ``x-request-id`` of the RPC being served ("" outside an RPC).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("daveloper_request_id", default="")
#: The caller's address: the peer's, or the one a trusted proxy (the edge) reported ("" outside an RPC).
client_address_var: contextvars.ContextVar[str] = contextvars.ContextVar("daveloper_client_address", default="")
#: The full method path of the RPC being served ("" outside an RPC).
method_var: contextvars.ContextVar[str] = contextvars.ContextVar("daveloper_method", default="")
#: The authenticated session of the RPC being served ("" when none).
session_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("daveloper_session_id", default="")


def current_request_id() -> str:
    return request_id_var.get()


def current_session_id() -> str:
    return session_id_var.get()
#: Trailing metadata the RPC being served will send with its status (a fresh dict per RPC).
trailers_var: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("daveloper_trailers")
