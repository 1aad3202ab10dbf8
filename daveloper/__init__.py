"""Daveloper: a self-hostable, gRPC-first backend for AI developer assistants.

The names below are imported on first use, so that importing one submodule
(``daveloper.rpc``, ``daveloper.errors``) does not load the whole application
with its Qdrant, parsing and LLM clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daveloper.app import App, open_app, serve
    from daveloper.config import Settings
    from daveloper.errors import DaveloperError
    from daveloper.rpc import Call, Servicer, public

__all__ = ["App", "Call", "DaveloperError", "Servicer", "Settings", "__version__", "open_app", "public", "serve"]

__version__ = "0.1.0"

_HOMES = {
    "App": "daveloper.app",
    "open_app": "daveloper.app",
    "serve": "daveloper.app",
    "Settings": "daveloper.config",
    "DaveloperError": "daveloper.errors",
    "Call": "daveloper.rpc",
    "Servicer": "daveloper.rpc",
    "public": "daveloper.rpc",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'daveloper' has no attribute {name!r}")
