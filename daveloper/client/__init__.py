"""The ``daveloper`` command's client side: chat, ingest, scrape, doctor and health.

A small layer over the generated stubs for people at a terminal. Everything it
needs (server address, token, terminal) arrives from :mod:`daveloper.cli`, the
only place that reads the environment.
"""

from daveloper.client.connection import ClientOptions, CommandFailed, Connection, TokenCache, open_connection
from daveloper.client.terminal import Interrupts, Terminal

__all__ = [
    "ClientOptions",
    "CommandFailed",
    "Connection",
    "Interrupts",
    "Terminal",
    "TokenCache",
    "open_connection",
]
