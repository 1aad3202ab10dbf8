"""How the event log names its Redis keys (:mod:`daveloper.keys`), and how it awaits Redis."""

from __future__ import annotations

from daveloper.infra.redis import redis_call
from daveloper.keys import ScopeKeys

__all__ = ["ScopeKeys", "redis_call"]
