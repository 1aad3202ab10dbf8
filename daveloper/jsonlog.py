"""Structured logging: one JSON object per line on stderr, with the request's context.

Every record carries the request id and session of the RPC that emitted it
(from ContextVars, so handlers never pass them around) and the instance id.
Fields passed with ``extra=`` become top-level keys. Every record is redacted
first (:mod:`daveloper.logredaction`): no secret reaches a line.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from daveloper.logredaction import RedactingFilter, Redactor
from daveloper.rpc.context import request_id_var, session_id_var

__all__ = ["JsonFormatter", "configure_logging", "extra_fields"]

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the record's ``extra=`` added."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line."""

    def __init__(self, instance_id: str) -> None:
        super().__init__()
        self._instance = instance_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ).replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "instance": self._instance,
        }
        if request_id := request_id_var.get():
            entry["request_id"] = request_id
        if session_id := session_id_var.get():
            entry["session_id"] = session_id
        entry.update(extra_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # the redacting filter leaves the traceback here, as text
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str, instance_id: str, stream: TextIO | None = None, *,
                      secrets: Iterable[str] = ()) -> None:
    """Route every logger to one JSON handler at ``level`` (replaces earlier handlers).

    The handler redacts each record before it formats it: ``secrets`` by value
    (see :func:`daveloper.logredaction.secrets_of`), credentials by their shape.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter(Redactor(secrets)))
    handler.setFormatter(JsonFormatter(instance_id))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # grpclib logs every client cancel at INFO with a traceback; cancels are normal here.
    logging.getLogger("grpclib.server").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # hpack logs every HTTP/2 header it codes at DEBUG, bearer tokens included: never below INFO.
    logging.getLogger("hpack").setLevel(max(logging.INFO, logging.getLevelName(level)))
