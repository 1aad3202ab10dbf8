"""Daveloper: a self-hostable, gRPC-first backend for AI developer assistants."""

from daveloper.app import App, open_app, serve
from daveloper.config import Settings
from daveloper.errors import DaveloperError
from daveloper.rpc import Call, Servicer, public

__all__ = ["App", "Call", "DaveloperError", "Servicer", "Settings", "__version__", "open_app", "public", "serve"]

__version__ = "0.1.0"
