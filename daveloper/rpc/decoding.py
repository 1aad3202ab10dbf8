"""Request bytes are checked by protobuf's C parser before betterproto2 reads them.

betterproto2 decodes in pure Python: it reads bytes that are not a message as
an empty one, raises ``UnicodeDecodeError`` on invalid UTF-8 in a string, and
recurses once per nesting level (a ``Struct`` nested a few hundred levels deep
was a ``RecursionError``, and a 775 KiB one cost 500 MiB of transient memory).
Each of those answered INTERNAL. :class:`RequestValidator` first parses the
bytes with the message's upb class, built from the server's descriptor pool:
upb is strict about the wire format and UTF-8, stops at a fixed nesting depth
(100 message levels) before allocating for the levels below, and runs in C
(a few per cent of betterproto2's decode time). Whatever it refuses is
INVALID_ARGUMENT with a ``BadRequest`` violation naming the message type.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message, message_factory

from daveloper.errors import InvalidArgument
from generated.message_pool import default_message_pool

__all__ = ["MALFORMED_MESSAGE", "RequestValidator"]

#: The ErrorInfo reason of a request whose bytes are not a valid message.
MALFORMED_MESSAGE = "MALFORMED_MESSAGE"

_TYPE_URL_PREFIX = "type.googleapis.com/"
#: upb's words for its refusals, in the client's words.
_EXPLAINED = {
    "MaxDepth": "messages nested deeper than the limit of 100 levels",
    "UTF-8": "a string field holds invalid UTF-8",
    "corrupt": "the bytes are not a valid protobuf message",
}


def _explain(error: Exception) -> str:
    text = str(error)
    return next((why for key, why in _EXPLAINED.items() if key in text),
                "the bytes are not a valid protobuf message")


class RequestValidator:
    """Decodes request bytes into ``message_type``, refusing malformed ones (see the module docstring)."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool
        self._strict: dict[type[Any], type[message.Message] | None] = {}

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        """``message_type`` read from ``data``; raises :class:`InvalidArgument` when the bytes are malformed."""
        if issubclass(message_type, message.Message):  # protobuf's own classes (health, reflection) are upb already
            return self._parse(message_type, data, message_type)
        strict = self._strict_class(message_type)
        if strict is not None:
            self._parse(strict, data, message_type)
        try:
            return message_type.FromString(data)
        except (ValueError, EOFError, UnicodeDecodeError, RecursionError, IndexError) as exc:
            # A type without a descriptor here (none of the served ones): betterproto2's own refusal.
            raise self._refusal(message_type, "the bytes are not a valid protobuf message") from exc

    def _parse(self, strict: type[message.Message], data: bytes, message_type: type[Any]) -> Any:
        try:
            return strict.FromString(data)
        except message.DecodeError as exc:
            raise self._refusal(message_type, _explain(exc)) from None

    def _strict_class(self, message_type: type[Any]) -> type[message.Message] | None:
        try:
            return self._strict[message_type]
        except KeyError:
            pass
        strict: type[message.Message] | None = None
        url = _type_url(message_type)
        if url.startswith(_TYPE_URL_PREFIX):
            try:
                descriptor = self._pool.FindMessageTypeByName(url.removeprefix(_TYPE_URL_PREFIX))
            except KeyError:
                descriptor = None
            if descriptor is not None:
                strict = message_factory.GetMessageClass(descriptor)
        self._strict[message_type] = strict
        return strict

    @staticmethod
    def _refusal(message_type: type[Any], why: str) -> InvalidArgument:
        name = _type_url(message_type).removeprefix(_TYPE_URL_PREFIX) or message_type.__name__
        return InvalidArgument(f"malformed {name}: {why}", violations=[(name, why)], reason=MALFORMED_MESSAGE)


def _type_url(message_type: type[Any]) -> str:
    """``type.googleapis.com/<full name>`` of a betterproto2 or protobuf message class ("" if unknown)."""
    if issubclass(message_type, message.Message):
        return _TYPE_URL_PREFIX + message_type.DESCRIPTOR.full_name
    return str(default_message_pool.type_to_url.get(message_type, ""))
