"""Secrets never reach a log line: one filter that every log handler of the server runs first.

:class:`Redactor` replaces, in any text:

* the server's own secrets, given to it by value (admin token, metrics token,
  API keys of the LLM, embedding, Qdrant and GitHub endpoints, the signing keys,
  passwords in the Redis and Qdrant URLs) — also as they appear quoted by
  ``repr`` or percent-encoded, the forms exception messages use;
* credentials by their shape: ``Bearer``/``Basic`` values, ``key=value`` pairs
  whose key names a credential (``authorization``, ``api_key``, ``token``,
  ``password`` ...), session tokens (``v1.<id>.<expiry>.<signature>``), JWTs,
  OpenAI/GitHub/Slack/AWS key formats, private-key blocks, and long random-looking
  words (40+ characters mixing upper case, lower case and digits).

:class:`RedactingFilter` applies it to a ``logging.LogRecord`` in place — the
formatted message, the ``extra=`` fields, the traceback text and the stack — so
that every handler after it, and every formatter, sees only the redacted record.
Third-party text is covered as well as ours: grpclib's ``Invalid metadata
value: 'Bearer …'``, an SDK's exception carrying a request header, a traceback.
The server installs it on the JSON log handler (:func:`daveloper.jsonlog.configure_logging`)
and on the live log publisher (:class:`daveloper.logstream.LogPublisher`).
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from daveloper.config import Settings

__all__ = ["MASK", "RedactingFilter", "Redactor", "secrets_of"]

#: What a redacted value is replaced with.
MASK = "[REDACTED]"

# Values shorter than this are not redacted by value: masking "abc" everywhere would garble logs
# and protect nothing (such a secret is guessable anyway).
_MIN_SECRET = 6

#: A scheme, then its credentials (up to a quote, whitespace or separator, as in a repr or a header dump).
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)(?!token\b|<token>)[^\s'\",;]+")
#: ``key=value`` / ``key: value`` / ``"key": "value"`` where the key names a credential.
#: Header names take ``name: value``; other keys ``key=value`` or a quoted ``"key": value`` (prose such as
#: "token: send ..." is not a pair).
_PAIR = re.compile(
    r"(?i)(?:\b((?:proxy-)?authorization|x-api-key|x-goog-api-key)(['\"]?\s*[:=]\s*['\"]?)"
    r"|\b(api[-_]?key|access[-_]?token|refresh[-_]?token|auth[-_]?token|token|secret|secret[-_]?key"
    r"|client[-_]?secret|password|passwd)(\s*=\s*['\"]?|['\"]\s*:\s*['\"]?))"
    r"(?!bearer\b|basic\b)[^\s'\",;&]+"
)
_SHAPES = re.compile("|".join((
    r"\bv1\.[A-Za-z0-9_-]{8,}\.\d{6,}\.[A-Za-z0-9_-]{20,}",  # a session token
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # a JWT
    r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI and compatible
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",  # GitHub
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    # A long random-looking word: what generated keys and tokens look like (ids are shorter or one case).
    r"(?<![\w-])(?=[\w-]{40,}(?![\w-]))(?=[\w-]*?[A-Z])(?=[\w-]*?[a-z])(?=[\w-]*?\d)[\w-]+",
)))


def secrets_of(settings: Settings) -> list[str]:
    """Every secret ``settings`` holds, by value: tokens, API keys, signing keys, URL passwords."""
    values = [settings.admin_token, settings.metrics_token, settings.secret_key, settings.llm_api_key,
              settings.embedding_api_key, settings.qdrant_api_key, settings.github_token,
              *settings.previous_secret_keys]
    for url in (settings.redis_url, settings.qdrant_url, settings.llm_base_url, settings.embedding_base_url):
        if url:
            try:
                values.append(urlsplit(url).password)
            except ValueError:
                continue
    return [value for value in values if value]


class Redactor:
    """Replaces secrets and credential-shaped values in text (see the module docstring)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) < _MIN_SECRET:
                continue
            # As given, as repr() shows it inside quotes, and percent-encoded (URLs, grpc-message).
            forms.update((secret, repr(secret)[1:-1], quote(secret, safe="")))
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._known = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        """``text`` with every secret it contains replaced by :data:`MASK`."""
        if self._known is not None:
            text = self._known.sub(MASK, text)
        text = _SCHEME.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)
        text = _PAIR.sub(lambda m: f"{m[1] or m[3]}{m[2] or m[4]}{MASK}", text)
        return _SHAPES.sub(MASK, text)


_PLAIN = (int, float, bool, type(None))
# Attributes every LogRecord has; anything else came from ``extra=`` (as in daveloper.jsonlog).
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Redacts a log record in place before any handler formats it; never drops one."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True  # an earlier handler's filter did it already
        redact = self.redactor.redact
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not bypass redaction
            message = f"{record.msg!s} (arguments could not be formatted)"
        record.msg, record.args = redact(message), None
        if record.exc_info:
            # The traceback as text, redacted; the exception objects themselves go (their repr can hold
            # the secret too). Formatters print exc_text when exc_info is empty.
            record.exc_text = redact(record.exc_text or "".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_") and not isinstance(value, _PLAIN):
                setattr(record, key, redact(value if isinstance(value, str) else str(value)))
        record._redacted = True
        return True
