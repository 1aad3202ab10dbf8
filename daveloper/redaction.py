"""Redaction of text before it leaves the process for an external LLM or embedding endpoint.

Uploaded documents, scraped pages and chat messages may hold e-mail
addresses, card numbers, API keys and tokens. With ``DAVELOPER_REDACT`` set,
:class:`OutboundRedactor` replaces them with a typed placeholder (``[REDACTED:email]``)
in every text sent to the model or the embedding endpoint:

* ``none`` (the default): nothing is changed;
* ``secrets``: private key blocks, common key and token formats (AWS, GitHub,
  OpenAI, Slack, Google, Stripe, JWTs, ``Bearer`` values), values assigned to
  names like ``password`` or ``api_key``, and other long high-entropy strings;
* ``pii``: the secrets, plus e-mail addresses and card numbers (13-19 digits
  that pass the Luhn check, spaces or dashes allowed between groups).

The patterns are plain regular expressions with bounded repetition (linear
time); high entropy is judged per token. Redaction is best effort: it lowers
what leaves, it proves nothing.

The caller's session id goes upstream (OpenAI's ``user`` field) only as
:meth:`OutboundRedactor.pseudonym`, a keyed hash: the provider can still group a
session's requests without learning the id.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MODES", "OutboundRedactor", "Redacted", "redact_arguments", "redact_contents"]

#: The values ``DAVELOPER_REDACT`` takes.
MODES = ("none", "secrets", "pii")

_SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("private_key", re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----[\s\S]{0,20000}?"
                               r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----")),
    ("aws_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")),
    ("openai_key", re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,200}\b")),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,200}\b")),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("stripe_key", re.compile(r"\b[rsp]k_(?:live|test)_[0-9A-Za-z]{16,200}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,4000}\.eyJ[A-Za-z0-9_-]{8,8000}\.[A-Za-z0-9_-]{8,2000}")),
    ("bearer", re.compile(r"(?i)\bbearer (?P<value>[A-Za-z0-9._~+/=-]{16,4000})")),
    ("assigned_secret", re.compile(
        r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token)[\"']?\s{0,3}"
        r"[:=]\s{0,3}[\"']?(?P<value>[^\s\"',;]{6,400})")),
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b")
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
#: Candidates for the entropy test: long runs of token characters.
_TOKEN = re.compile(r"[A-Za-z0-9+/_=.-]{24,4096}")
_MIN_ENTROPY_BITS = 4.0


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _entropy(text: str) -> float:
    counts = collections.Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _secret_like(token: str) -> bool:
    """High entropy and a mix of letters and digits: a key, not a word, a path or a number."""
    core = token.strip("=.-_/")
    if len(core) < 24 or core.count("/") > 2 or core.count(".") > 2:  # a path, a URL part, a dotted name
        return False
    has_digit = any(c.isdigit() for c in core)
    has_upper, has_lower = any(c.isupper() for c in core), any(c.islower() for c in core)
    return has_digit and has_upper and has_lower and _entropy(core) >= _MIN_ENTROPY_BITS


@dataclass(frozen=True, slots=True)
class Redacted:
    """A redacted text and what was taken out of it (kind → count)."""

    text: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class OutboundRedactor:
    """Applies one ``DAVELOPER_REDACT`` mode (see the module docstring).

    ``key`` keys :meth:`pseudonym` (a random one per process if not given);
    ``on_redacted(kind, count)`` is told of every redaction, e.g. to count it in metrics.
    """

    def __init__(self, mode: str = "none", *, key: bytes | None = None,
                 on_redacted: Callable[[str, int], None] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"redaction mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self._key = hmac.new(key or secrets.token_bytes(32), b"daveloper upstream user", hashlib.sha256).digest()
        self._on_redacted = on_redacted

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def pseudonym(self, session_id: str) -> str:
        """A stable stand-in for ``session_id`` that does not reveal it (HMAC-SHA256, 32 hex digits)."""
        return hmac.new(self._key, session_id.encode(), hashlib.sha256).hexdigest()[:32]

    def redact(self, text: str) -> Redacted:
        """``text`` with what the mode covers replaced by ``[REDACTED:<kind>]``."""
        if not self.enabled or not text:
            return Redacted(text, {})
        counts: collections.Counter[str] = collections.Counter()

        def replace(kind: str) -> Callable[[re.Match[str]], str]:
            def sub(match: re.Match[str]) -> str:
                counts[kind] += 1
                if "value" not in match.re.groupindex:
                    return f"[REDACTED:{kind}]"
                start, end = match.span("value")  # keep the name: "password=[REDACTED:...]"
                whole = match.group()
                offset = match.start()
                return whole[:start - offset] + f"[REDACTED:{kind}]" + whole[end - offset:]
            return sub

        for kind, pattern in _SECRET_PATTERNS:
            text = pattern.sub(replace(kind), text)
        if self.mode == "pii":
            text = _EMAIL.sub(replace("email"), text)

            def card(match: re.Match[str]) -> str:
                digits = re.sub(r"[ -]", "", match.group())
                if 13 <= len(digits) <= 19 and _luhn(digits):
                    counts["card_number"] += 1
                    return "[REDACTED:card_number]"
                return match.group()

            text = _CARD.sub(card, text)

        def entropy(match: re.Match[str]) -> str:
            token = match.group()
            if "[REDACTED:" in token or not _secret_like(token):
                return token
            counts["high_entropy"] += 1
            return "[REDACTED:high_entropy]"

        text = _TOKEN.sub(entropy, text)
        if self._on_redacted is not None:
            for kind, count in counts.items():
                self._on_redacted(kind, count)
        return Redacted(text, dict(counts))


def redact_contents(messages: Sequence[Any], redactor: OutboundRedactor) -> int:
    """Redact chat messages in the OpenAI wire form in place; how many values were redacted.

    Everything in them that came from a user, a document, a page or the model: each message's
    string ``content`` (system, user, assistant and tool results alike), and the ``arguments`` of
    the tool calls earlier assistant messages made (see :func:`redact_arguments`).
    """
    if not redactor.enabled:
        return 0
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and content:
            redacted = redactor.redact(content)
            message["content"] = redacted.text
            total += redacted.total
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                function["arguments"], count = redact_arguments(arguments, redactor)
                total += count
    return total


def redact_arguments(arguments: str, redactor: OutboundRedactor) -> tuple[str, int]:
    """A tool call's JSON ``arguments`` with every string in them redacted (keys too); the count.

    Redacted value by value, so the result stays the JSON it was (a placeholder in place of a
    number would not be); unchanged text is returned as it came. Arguments that are not JSON (a
    model may produce anything) are redacted as text.
    """
    try:
        parsed = json.loads(arguments)
    except ValueError:
        redacted = redactor.redact(arguments)
        return redacted.text, redacted.total
    total = 0

    def walk(value: object) -> object:
        nonlocal total
        if isinstance(value, str):
            redacted = redactor.redact(value)
            total += redacted.total
            return redacted.text
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {walk(key): walk(item) for key, item in value.items()}
        if isinstance(value, int | float) and not isinstance(value, bool):
            # A card number the model wrote as a JSON number: redacted like the same digits in text.
            redacted = redactor.redact(str(value))
            if redacted.total:
                total += redacted.total
                return redacted.text
        return value

    result = walk(parsed)
    return (json.dumps(result, ensure_ascii=False), total) if total else (arguments, 0)
